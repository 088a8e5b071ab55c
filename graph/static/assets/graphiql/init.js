// GraphiQL at /graphql, as Strawberry's page sets it up, from recograph's own assets (no CDN) and with no inline
// script. The query and variables are kept in the URL for sharing; headers never are. A key signed in to the
// dashboard in this tab fills the headers editor, and headers are not persisted (no key in localStorage).
"use strict";

(function () {
  const EXAMPLE_QUERY = `# recograph GraphiQL
#
# Send your key in the Headers tab below:  { "Authorization": "Bearer <key>" }
#
# Run: Ctrl-Enter.  Complete: Ctrl-Space.
#
query Scenarios {
  scenarios(first: 10) {
    edges { node { id name template stats { items interactions } } }
  }
}
`;
  const DASHBOARD_KEY = "recograph.adminKey";

  const parameters = {};
  for (const entry of window.location.search.slice(1).split("&")) {
    const eq = entry.indexOf("=");
    if (eq >= 0) {
      parameters[decodeURIComponent(entry.slice(0, eq))] = decodeURIComponent(entry.slice(eq + 1));
    }
  }

  function updateURL(data) {
    Object.assign(parameters, data);
    const search = Object.keys(parameters)
      .filter((key) => Boolean(parameters[key]))
      .map((key) => encodeURIComponent(key) + "=" + encodeURIComponent(parameters[key]))
      .join("&");
    history.replaceState(null, "", "?" + search);
  }

  function toWebSocketUrl(url) {
    const parsed = new URL(url);
    parsed.protocol = parsed.protocol === "http:" ? "ws:" : "wss:";
    parsed.hash = "";
    return parsed.toString();
  }

  function initialHeaders() {
    let key = null;
    try {
      key = window.sessionStorage.getItem(DASHBOARD_KEY);
    } catch (_) {
      key = null; // storage disabled: the operator types the header
    }
    return key ? JSON.stringify({ Authorization: "Bearer " + key }, null, 2) : undefined;
  }

  const fetchURL = window.location.href.split("?")[0].split("#")[0];
  const fetcher = GraphiQL.createFetcher({ url: fetchURL, subscriptionUrl: toWebSocketUrl(fetchURL) });
  const explorerPlugin = GraphiQLPluginExplorer.explorerPlugin();

  function GraphiQLWithExplorer() {
    const [query, setQuery] = React.useState(parameters.q || EXAMPLE_QUERY);
    const [variables, setVariables] = React.useState(parameters.variables);
    const [headers, setHeaders] = React.useState(initialHeaders);

    return React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultEditorToolsVisibility: true,
      plugins: [explorerPlugin],
      query: query,
      variables: variables,
      headers: headers,
      onEditQuery: (value) => {
        setQuery(value);
        updateURL({ q: value });
      },
      onEditVariables: (value) => {
        setVariables(value);
        updateURL({ variables: value });
      },
      onEditHeaders: setHeaders,
      inputValueDeprecation: true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: false,
    });
  }

  ReactDOM.createRoot(document.getElementById("graphiql")).render(React.createElement(GraphiQLWithExplorer));
})();
