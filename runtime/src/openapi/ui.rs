//! The browsable page of the description (`[openapi] ui`, feature `openapi-ui`): Scalar's API
//! reference, which the browser loads from its CDN, pointed at the description. Nothing is
//! bundled: the page is a few lines of HTML.

/// The page for the description served at `description_path`.
pub(crate) fn page(title: &str, description_path: &str) -> String {
    let escape =
        |text: &str| text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    format!(
        r#"<!doctype html>
<html>
  <head>
    <title>{title}</title>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
  </head>
  <body>
    <script id="api-reference" data-url="{url}"></script>
    <script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script>
  </body>
</html>
"#,
        title = escape(title),
        url = escape(description_path),
    )
}
