// The /docs page: Swagger UI (vendored, no CDN) over this server's /openapi.json.
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
});
