// Starts GraphiQL on /graphql with everything served by the service itself (no CDN).
// Queries and mutations go over HTTP with the headers editor's headers; subscriptions go over
// graphql-transport-ws (graphql-ws client) with the same headers in connection_init's payload
// ({"headers": {...}}, the form Apollo and Hasura clients send), one socket per header set.
(function () {
  "use strict";
  var endpoint = window.location.origin + window.location.pathname;
  var wsEndpoint = endpoint.replace(/^http/, "ws");
  var DEFAULT_HEADERS = '{\n  "Authorization": "Bearer "\n}';
  var DEFAULT_QUERY =
    "# Put your API key in the Headers tab below (kept in this browser's localStorage).\n" +
    "# Ctrl-Enter runs; subscriptions stream over WebSocket with the same headers.\n" +
    "query Conversations {\n  conversations(first: 5) {\n    totalCount\n" +
    "    edges { node { id sessionId status } }\n  }\n}\n";

  var httpFetcher = GraphiQL.createFetcher({ url: endpoint });
  var sockets = {};

  function socketFor(headers) {
    var key = JSON.stringify(headers);
    if (!sockets[key]) {
      sockets[key] = graphqlWs.createClient({
        url: wsEndpoint,
        lazy: true, // the socket closes when its last subscription ends
        retryAttempts: 0, // a refused key (4403) is shown, not retried forever
        connectionParams: { headers: headers },
      });
    }
    return sockets[key];
  }

  function isSubscription(params, opts) {
    var doc = opts && opts.documentAST;
    if (!doc) return /^\s*subscription\b/m.test(params.query || "");
    var ops = doc.definitions.filter(function (d) { return d.kind === "OperationDefinition"; });
    var op = params.operationName
      ? ops.filter(function (d) { return d.name && d.name.value === params.operationName; })[0]
      : ops[0];
    return Boolean(op) && op.operation === "subscription";
  }

  function describe(error) {
    // graphql-ws reports a closed socket as a CloseEvent; show its code and reason.
    if (error && typeof error.code === "number") {
      return new Error("WebSocket closed " + error.code + (error.reason ? ": " + error.reason : ""));
    }
    if (Array.isArray(error)) return { errors: error };
    return error;
  }

  function fetcher(params, opts) {
    if (params.operationName === "IntrospectionQuery" || !isSubscription(params, opts)) {
      return httpFetcher(params, opts);
    }
    var socket = socketFor((opts && opts.headers) || {});
    return {
      subscribe: function (observer) {
        var dispose = socket.subscribe(params, {
          next: function (value) { observer.next(value); },
          error: function (error) { observer.error(describe(error)); },
          complete: function () { observer.complete(); },
        });
        return { unsubscribe: dispose };
      },
    };
  }

  // The schema is fetched once on load, with the headers of that moment: a first visit has no key
  // yet, so introspection is refused until the user pastes one. Re-fetch it when the headers
  // change and parse (debounced, so half-typed JSON is never sent), as the toolbar's
  // "Re-fetch GraphQL schema" button would; GraphiQL then reads the editor's current headers.
  var lastHeaders = null;
  var refetchTimer = null;
  function onEditHeaders(text) {
    clearTimeout(refetchTimer);
    refetchTimer = setTimeout(function () {
      try {
        JSON.parse(text || "{}");
      } catch (e) {
        return;
      }
      if (text === lastHeaders) return;
      lastHeaders = text;
      var button = document.querySelector('[aria-label="Re-fetch GraphQL schema"]');
      if (button) button.click();
    }, 800);
  }

  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: DEFAULT_QUERY,
      defaultHeaders: DEFAULT_HEADERS,
      defaultEditorToolsVisibility: "headers",
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: true,
      onEditHeaders: onEditHeaders,
      inputValueDeprecation: true,
    })
  );
})();
