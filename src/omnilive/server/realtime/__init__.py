"""The OpenAI Realtime API (voice chat over a WebSocket): events, session state, turns, responses."""
