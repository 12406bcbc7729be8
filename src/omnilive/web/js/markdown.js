// A small Markdown renderer for model replies. Safety first: the text is HTML-escaped before
// any markup is added, and links keep only http(s) and mailto targets. Handles fenced code
// (an unclosed fence while streaming counts as code), inline code, bold, italics, headings,
// bullet and numbered lists, block quotes, links and paragraphs.

export function escapeHtml(text) {
  return text
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

export function renderMarkdown(source) {
  const parts = source.replace(/\r\n?/g, "\n").split(/^```/m);
  // parts alternate: prose, fence body, prose, fence body...
  return parts
    .map((part, i) => (i % 2 === 1 ? codeBlock(part) : renderBlocks(part)))
    .join("");
}

function codeBlock(fence) {
  const newline = fence.indexOf("\n");
  const language = newline >= 0 ? fence.slice(0, newline).trim() : fence.trim();
  const code = newline >= 0 ? fence.slice(newline + 1).replace(/\n$/, "") : "";
  const label = /^[\w+#.-]{1,20}$/.test(language) ? language : "";
  const attribute = label ? ` data-language="${escapeHtml(label)}"` : "";
  return `<pre${attribute}><code>${escapeHtml(code)}</code></pre>`;
}

function renderBlocks(text) {
  const lines = text.split("\n");
  const html = [];
  let paragraph = [];
  let list = null; // { tag: "ul" | "ol", items: [] }
  let quote = [];

  const flushParagraph = () => {
    if (paragraph.length) html.push(`<p>${paragraph.map(inline).join("<br>")}</p>`);
    paragraph = [];
  };
  const flushList = () => {
    if (list) html.push(`<${list.tag}>${list.items.map((item) => `<li>${inline(item)}</li>`).join("")}</${list.tag}>`);
    list = null;
  };
  const flushQuote = () => {
    if (quote.length) html.push(`<blockquote>${quote.map(inline).join("<br>")}</blockquote>`);
    quote = [];
  };
  const flushAll = () => {
    flushParagraph();
    flushList();
    flushQuote();
  };

  for (const line of lines) {
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    const bullet = /^\s*[-*+]\s+(.*)$/.exec(line);
    const numbered = /^\s*\d+[.)]\s+(.*)$/.exec(line);
    const quoted = /^>\s?(.*)$/.exec(line);
    if (!line.trim()) {
      flushAll();
    } else if (heading) {
      flushAll();
      const level = Math.min(heading[1].length + 2, 6); // the page's own headings come first
      html.push(`<h${level}>${inline(heading[2])}</h${level}>`);
    } else if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      flushAll();
      html.push("<hr>");
    } else if (bullet || numbered) {
      flushParagraph();
      flushQuote();
      const tag = bullet ? "ul" : "ol";
      if (list && list.tag !== tag) flushList();
      if (!list) list = { tag, items: [] };
      list.items.push((bullet || numbered)[1]);
    } else if (quoted) {
      flushParagraph();
      flushList();
      quote.push(quoted[1]);
    } else if (list && /^\s+\S/.test(line)) {
      list.items[list.items.length - 1] += " " + line.trim(); // a wrapped list item
    } else {
      flushList();
      flushQuote();
      paragraph.push(line);
    }
  }
  flushAll();
  return html.join("");
}

// Inline markup on one escaped line. Code spans are set aside first so nothing inside them
// is treated as markup.
function inline(raw) {
  const spans = [];
  let text = escapeHtml(raw).replace(/`([^`]+)`/g, (_, code) => {
    spans.push(`<code>${code}</code>`);
    return `\u0000${spans.length - 1}\u0000`;
  });
  text = text
    .replace(/\[([^\]]+)\]\(([^)\s]+)\)/g, (whole, label, url) =>
      safeUrl(url) ? `<a href="${url}" target="_blank" rel="noopener noreferrer">${label}</a>` : whole,
    )
    .replace(/(^|[\s(])(https?:\/\/[^\s<)]*[^\s<).,;:!?])/g, (_, before, url) =>
      `${before}<a href="${url}" target="_blank" rel="noopener noreferrer">${url}</a>`,
    )
    .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
    .replace(/__([^_]+)__/g, "<strong>$1</strong>")
    .replace(/(^|[^*\w])\*([^*\s][^*]*?)\*(?!\w)/g, "$1<em>$2</em>")
    .replace(/(^|[^_\w])_([^_\s][^_]*?)_(?!\w)/g, "$1<em>$2</em>")
    .replace(/~~([^~]+)~~/g, "<del>$1</del>");
  return text.replace(/\u0000(\d+)\u0000/g, (_, i) => spans[Number(i)]);
}

function safeUrl(url) {
  return /^(https?:\/\/|mailto:)/i.test(url.replace(/&amp;/g, "&"));
}
