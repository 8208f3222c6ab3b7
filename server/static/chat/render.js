// Model output as Markdown, sanitised: marked makes HTML, DOMPurify keeps only inert markup (no script, no event
// handler, no javascript: URL). The page's CSP (no inline script) is the second wall.
import { marked } from '/static/vendor/marked-18.2.1/marked.esm.js';
import DOMPurify from '/static/vendor/dompurify-3.4.18/purify.es.mjs';

marked.setOptions({ gfm: true, breaks: true });

export function renderMarkdown(element, text) {
  element.innerHTML = DOMPurify.sanitize(marked.parse(text), { USE_PROFILES: { html: true } });
}
