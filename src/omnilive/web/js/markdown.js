// Model replies as Markdown, rendered by vendored libraries (web/vendor/README.md): marked parses
// GitHub-flavoured Markdown (tables, strikethrough, task lists, autolinks), KaTeX renders maths
// ($…$, $$…$$, \(…\), \[…\], as thinking models write them), DOMPurify sanitises the result.
// Safety as before: raw HTML in a reply is shown as text, links keep only http(s) and mailto
// targets and open in a new tab, images are shown as links (no request leaves the page by
// itself), and DOMPurify removes anything executable that would still get through. Called on
// every streamed delta: an unclosed code fence is code, an unclosed formula stays plain text.

import { Marked } from "../vendor/marked.esm.js";
import DOMPurify from "../vendor/purify.es.mjs";
import katex from "../vendor/katex/katex.mjs";

export function escapeHtml(text) {
  return text
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

const SAFE_URL = /^(https?:\/\/|mailto:)/i;

function renderMath(tex, displayMode) {
  // trust: false keeps \href, \url and \htmlClass from making links or attributes
  return katex.renderToString(tex, { displayMode, throwOnError: false, output: "htmlAndMathml", trust: false });
}

function mathExtension(name, open, close, displayMode) {
  const quote = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  // $…$ must hug its formula and not be followed by a digit, so "$5 and $10" stays text
  const body = open === "$" ? "(?!\\s)([^\\n$]+?)(?<!\\s)" : "([\\s\\S]+?)";
  const after = open === "$" ? "(?!\\d)" : "";
  const rule = new RegExp(`^${quote(open)}${body}${quote(close)}${after}`);
  return {
    name,
    level: "inline",
    start(src) {
      const index = src.indexOf(open);
      return index < 0 ? undefined : index;
    },
    tokenizer(src) {
      const match = rule.exec(src);
      if (match) return { type: name, raw: match[0], text: match[1].trim() };
      return undefined;
    },
    renderer(token) {
      return renderMath(token.text, displayMode);
    },
  };
}

const renderer = {
  html({ text }) {
    return escapeHtml(text); // raw HTML from the model is shown, never interpreted
  },
  heading({ tokens, depth }) {
    const level = Math.min(depth + 2, 6); // the page's own headings come first
    return `<h${level}>${this.parser.parseInline(tokens)}</h${level}>`;
  },
  code({ text, lang }) {
    const label = /^[\w+#.-]{1,20}$/.test(lang || "") ? lang : "";
    const attribute = label ? ` data-language="${escapeHtml(label)}"` : "";
    return `<pre${attribute}><code>${escapeHtml(text)}</code></pre>`;
  },
  link({ href, tokens }) {
    const label = this.parser.parseInline(tokens);
    return SAFE_URL.test(href || "") ? `<a href="${escapeHtml(href)}">${label}</a>` : label;
  },
  image({ href, text }) {
    return SAFE_URL.test(href || "") ? `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>` : escapeHtml(text);
  },
};

const marked = new Marked({
  gfm: true,
  breaks: true, // a line break in a reply is a line break on screen
  renderer,
  extensions: [
    mathExtension("displayDollars", "$$", "$$", true),
    mathExtension("displayBrackets", "\\[", "\\]", true),
    mathExtension("inlineParens", "\\(", "\\)", false),
    mathExtension("inlineDollar", "$", "$", false),
  ],
});

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    if (!SAFE_URL.test(node.getAttribute("href") || "")) node.removeAttribute("href");
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

export function renderMarkdown(source) {
  const html = marked.parse(source.replace(/\r\n?/g, "\n"));
  // KaTeX's MathML keeps its TeX source in <annotation> (copy, screen readers): plain text, allowed
  return DOMPurify.sanitize(html, { ADD_TAGS: ["annotation"], ADD_ATTR: ["target", "encoding"],
                                   FORBID_TAGS: ["style", "form", "img"] });
}
