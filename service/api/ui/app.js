// semid explorer: a read-only view of the served index over its JSON API (/v1). No dependencies, no build step.
// Where you are lives in the URL hash (#/tree/12-201?cursor=..., #/item/42, #/resolve/12-201-7-0, #/map?seed=0,
// #/health),
// so a view can be shared and the back button works. The page never sends an API key.
"use strict";

(() => {
  const PAGE = 50; // items per page of a prefix: no view loads more than one page
  const SIBLINGS = 50;
  const NEAREST = 10;
  const LEGEND = 16; // first codes named beside the map
  // the SVG namespace, from the HTML parser (the page's files name no URL at all, not even a namespace)
  const SVG_NS = (() => {
    const probe = document.createElement("div");
    probe.innerHTML = "<svg></svg>";
    return probe.firstChild.namespaceURI;
  })();
  const CORE = new Set(["item_id", "semantic_id", "token", "base_code", "fallback"]);
  const view = document.getElementById("view");
  let generation = 0;
  let levelsPromise = null;

  // --- helpers -------------------------------------------------------------------------------------

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : String(kid));
    }
    return el;
  }

  // the same for SVG elements (the map): attributes only, no inline style (the CSP allows none)
  function svg(tag, attrs, ...kids) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
    for (const kid of kids.flat(Infinity)) if (kid !== null && kid !== undefined) el.append(kid instanceof Node ? kid : String(kid));
    return el;
  }

  const fmt = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : String(n));
  const pct = (x, digits = 1) => `${(100 * x).toFixed(digits)}%`;
  const enc = encodeURIComponent;
  const dashed = (codes) => codes.join("-");

  class ApiError extends Error {
    constructor(status, code, message, field) {
      super(message);
      this.status = status;
      this.code = code;
      this.field = field || null;
    }
  }

  // API paths are resolved against the page (/ui/ -> /v1/...), so the explorer also works under a path prefix.
  function apiUrl(path) {
    return new URL(".." + path, location.href).toString();
  }

  async function api(path, body) {
    const init = { headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (body !== undefined) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(apiUrl(path), init);
    } catch (err) {
      throw new ApiError(0, "network", `could not reach the server (${err.message})`);
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      const e = data && data.error;
      if (e && typeof e.message === "string") throw new ApiError(response.status, e.code, e.message, e.field);
      throw new ApiError(response.status, "http_error", `HTTP ${response.status} ${response.statusText}`.trim());
    }
    if (data === null) throw new ApiError(response.status, "bad_response", "the server's answer is not JSON");
    return data;
  }

  function errorBox(err) {
    const e = err instanceof ApiError ? err : new ApiError(0, "error", String((err && err.message) || err));
    const head = e.status ? `Error ${e.status} (${e.code})` : `Error (${e.code})`;
    return h(
      "div",
      { class: "error", role: "alert" },
      h("strong", {}, head),
      ": ",
      h("span", { class: "error-message" }, e.message),
      e.field ? h("span", { class: "error-field" }, ` (field: ${e.field})`) : null,
    );
  }

  // how many code levels the index has (L; an ID has L+1 positions), asked once
  function levels() {
    if (!levelsPromise) {
      levelsPromise = api("/v1/stats").then((s) => s.levels_count);
      levelsPromise.catch(() => {
        levelsPromise = null;
      });
    }
    return levelsPromise;
  }

  function heading(text) {
    return h("h2", { tabindex: "-1" }, text);
  }

  function treeHref(codes, cursor, page) {
    let href = "#/tree" + (codes.length ? "/" + dashed(codes) : "");
    if (cursor) href += `?cursor=${enc(cursor)}&page=${page}`;
    return href;
  }

  const itemHref = (id) => `#/item/${enc(String(id))}`;

  function idLink(sid) {
    return h("a", { href: treeHref(sid), class: "sid" }, dashed(sid));
  }

  function cell(value) {
    if (value === null || value === undefined) return h("span", { class: "muted" }, "-");
    if (Array.isArray(value)) return value.join(", ");
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function columnsOf(items) {
    const cols = [];
    for (const item of items) for (const key of Object.keys(item)) if (!CORE.has(key) && !cols.includes(key)) cols.push(key);
    return cols;
  }

  // a table of items: semantic ID, item id, kept columns (title, genres...), fallback
  function itemsTable(items, caption, extra) {
    const cols = columnsOf(items);
    const extraHead = extra ? extra.head : [];
    return h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "items" },
        h("caption", {}, caption),
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", { scope: "col" }, "Semantic ID"),
            h("th", { scope: "col" }, "Item"),
            cols.map((c) => h("th", { scope: "col" }, c)),
            extraHead.map((c) => h("th", { scope: "col" }, c)),
            h("th", { scope: "col" }, "Fallback"),
          ),
        ),
        h(
          "tbody",
          {},
          items.map((item, i) =>
            h(
              "tr",
              {},
              h("td", {}, idLink(item.semantic_id)),
              h("td", {}, h("a", { href: itemHref(item.item_id) }, String(item.item_id))),
              cols.map((c) => h("td", {}, cell(item[c]))),
              extra ? extra.cells(item, i).map((v) => h("td", { class: "num" }, v)) : [],
              h("td", {}, item.fallback ? "yes" : ""),
            ),
          ),
        ),
      ),
    );
  }

  function itemCard(item, title) {
    const rows = [
      ["Item", h("a", { href: itemHref(item.item_id) }, String(item.item_id))],
      ["Semantic ID", idLink(item.semantic_id)],
      ["Token", h("code", {}, item.token)],
      ["Base code", dashed(item.base_code)],
      ["Fallback", item.fallback ? "yes: its bucket was full, it sits at another last-level code" : "no"],
    ];
    for (const key of columnsOf([item])) rows.push([key, cell(item[key])]);
    return h(
      "section",
      { class: "card", "aria-label": title },
      h("h3", {}, title),
      h("dl", { class: "facts" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    );
  }

  function searchForm({ id, label, name, value, placeholder, button, onsubmit }) {
    const input = h("input", {
      id,
      name,
      type: "text",
      value: value || "",
      placeholder,
      autocomplete: "off",
      spellcheck: "false",
      required: true,
    });
    return h(
      "form",
      {
        class: "query",
        role: "search",
        onsubmit: (event) => {
          event.preventDefault();
          onsubmit(input.value.trim());
        },
      },
      h("label", { for: id }, label),
      h("div", { class: "row" }, input, h("button", { type: "submit" }, button)),
    );
  }

  function go(hash) {
    if (location.hash === hash) render(true);
    else location.hash = hash;
  }

  // --- tree ----------------------------------------------------------------------------------------

  function breadcrumb(codes) {
    const crumbs = [h("li", {}, codes.length ? h("a", { href: "#/tree" }, "Root") : h("span", { "aria-current": "page" }, "Root"))];
    codes.forEach((code, i) => {
      const last = i === codes.length - 1;
      crumbs.push(
        h("li", {}, last ? h("span", { "aria-current": "page" }, String(code)) : h("a", { href: treeHref(codes.slice(0, i + 1)) }, String(code))),
      );
    });
    return h("nav", { class: "breadcrumb", "aria-label": "Breadcrumb" }, h("ol", {}, crumbs));
  }

  // what a code means, from /v1/explain: its label, its terms, and up to three representative items
  function captionOf(item, columns) {
    const col = columns.find((c) => item[c] !== null && item[c] !== undefined);
    return col ? cell(item[col]) : String(item.item_id);
  }

  function meaningLine(meaning, columns) {
    const reps = meaning.representatives.map((item, i) => [
      i ? "; " : "",
      h("a", { href: itemHref(item.item_id) }, captionOf(item, columns)),
    ]);
    return h(
      "div",
      { class: "meaning", "data-code": meaning.prefix[meaning.prefix.length - 1] },
      meaning.label ? h("span", { class: "label" }, meaning.label) : null,
      meaning.terms.length > 2 ? h("span", { class: "terms" }, meaning.terms.slice(2).map((t) => t.term).join(" · ")) : null,
      reps.length ? h("span", { class: "reps" }, "e.g. ", reps) : null,
    );
  }

  function meaningSection(codes, explained) {
    const node = explained.node;
    const what = codes.length ? `What ${dashed(codes)} means` : "What the index holds";
    const terms = node.terms.map((t) =>
      h(
        "li",
        { title: `${fmt(t.items)} of ${fmt(node.scanned)} scanned items` },
        h("span", { class: "term" }, t.term),
        " ",
        h("span", { class: "muted" }, codes.length ? `${pct(t.share, 0)}, ×${t.lift.toFixed(1)}` : pct(t.share, 0)),
      ),
    );
    const sampled = node.scanned < node.count ? ` (from a sample of ${fmt(node.scanned)} items)` : "";
    return h(
      "section",
      { "aria-labelledby": "meaning-h", class: "meaning-node" },
      h("h3", { id: "meaning-h" }, what),
      !explained.columns.length
        ? h("p", { class: "hint" }, "The index keeps no text columns (semid assign --keep title,...): no terms to show.")
        : [
            h("p", {}, h("strong", { id: "node-label" }, node.label || "(no terms)"), h("span", { class: "muted" }, sampled)),
            h("ul", { class: "terms", id: "node-terms", "aria-label": "Its most telling terms" }, terms),
          ],
      node.representatives.length
        ? [
            h("p", { class: "muted" }, "Representative items (nearest the node's mean code vector):"),
            h(
              "ol",
              { class: "reps", id: "node-reps" },
              node.representatives.map((item) =>
                h("li", {}, h("a", { href: itemHref(item.item_id) }, captionOf(item, explained.columns)), " ", idLink(item.semantic_id)),
              ),
            ),
          ]
        : null,
    );
  }

  function childrenList(codes, children, total, explained) {
    const meanings = new Map(((explained && explained.children) || []).map((m) => [m.prefix[m.prefix.length - 1], m]));
    const columns = explained ? explained.columns : [];
    const max = Math.max(1, ...children.map((c) => c.count));
    return h(
      "ol",
      { class: "bars", "aria-label": "Next codes and their item counts" },
      children.map((child) => {
        const bar = h("span", { class: "bar", "aria-hidden": "true" });
        bar.style.width = `${(100 * child.count) / max}%`;
        return h(
          "li",
          {},
          h(
            "a",
            {
              href: treeHref([...codes, child.code]),
              class: "child",
              "data-code": child.code,
              "aria-label": `code ${child.code}: ${fmt(child.count)} items`,
            },
            h("span", { class: "code" }, String(child.code)),
            h("span", { class: "track" }, bar),
            h("span", { class: "count" }, fmt(child.count)),
            h("span", { class: "share" }, total ? pct(child.count / total) : ""),
          ),
          meanings.has(child.code) && columns.length ? meaningLine(meanings.get(child.code), columns) : null,
        );
      }),
    );
  }

  async function treeView(route) {
    const prefix = route.arg;
    const codes = prefix ? prefix.split("-").map((c) => (/^\d+$/.test(c) ? Number(c) : c)) : [];
    const cursor = route.params.get("cursor");
    const page = Math.max(1, Number.parseInt(route.params.get("page") || "1", 10) || 1);
    const out = [heading(prefix ? `Prefix ${prefix}` : "ID tree: first codes"), breadcrumb(codes)];
    out.push(
      searchForm({
        id: "prefix-input",
        name: "prefix",
        label: "Go to a prefix",
        value: prefix,
        placeholder: "e.g. 12-201",
        button: "Go",
        onsubmit: (v) => go(v ? `#/tree/${v.replace(/[\s,]+/g, "-")}` : "#/tree"),
      }),
    );
    const L = await levels();
    const leaf = codes.length > L; // a full ID: no next code
    const path = enc(prefix);
    const [kids, pageData, meaning] = await Promise.allSettled([
      leaf ? Promise.resolve({ children: [] }) : api(prefix ? `/v1/prefixes/${path}/children` : "/v1/children"),
      prefix ? api(`/v1/prefixes/${path}?limit=${PAGE}${cursor ? `&cursor=${enc(cursor)}` : ""}`) : Promise.resolve(null),
      api(prefix ? `/v1/explain/${path}` : "/v1/explain"),
    ]);
    if (kids.status === "rejected" && pageData.status === "rejected") {
      out.push(errorBox(pageData.reason));
      return out;
    }
    const children = kids.status === "fulfilled" ? kids.value.children : null;
    const count =
      pageData.status === "fulfilled" && pageData.value
        ? pageData.value.count
        : children
          ? children.reduce((s, c) => s + c.count, 0)
          : null;
    const depth = codes.length === 0 ? "root" : codes.length > L ? "full ID (with the dedup digit)" : codes.length === L ? `level ${L}: a base code (next: the dedup digit)` : `level ${codes.length} of ${L}`;
    out.push(
      h(
        "dl",
        { class: "summary", "aria-label": "This node" },
        h("div", {}, h("dt", {}, "Items"), h("dd", { id: "node-count" }, count === null ? "?" : fmt(count))),
        h("div", {}, h("dt", {}, "Fan-out"), h("dd", { id: "node-fanout" }, children ? fmt(children.length) : "?")),
        h("div", {}, h("dt", {}, "Depth"), h("dd", {}, depth)),
      ),
    );
    const explained = meaning.status === "fulfilled" ? meaning.value : null;
    if (explained) out.push(meaningSection(codes, explained));
    else if (kids.status === "fulfilled") out.push(errorBox(meaning.reason));
    if (kids.status === "rejected") out.push(errorBox(kids.reason));
    else if (!leaf) {
      const what = codes.length === L ? "Dedup digits" : `Codes at level ${codes.length + 1}`;
      out.push(
        h(
          "section",
          { "aria-labelledby": "children-h" },
          h("h3", { id: "children-h" }, `${what} (${fmt(children.length)})`),
          children.length ? childrenList(codes, children, count, explained) : h("p", {}, "No items under this prefix."),
        ),
      );
    }
    if (prefix) {
      if (pageData.status === "rejected") out.push(errorBox(pageData.reason));
      else out.push(itemsSection(codes, pageData.value, page, cursor));
    } else {
      out.push(h("p", { class: "hint" }, "Pick a code to see its items; the page shows one level at a time."));
    }
    return out;
  }

  function itemsSection(codes, data, page, cursor) {
    const first = (page - 1) * PAGE + 1;
    const last = first + data.items.length - 1;
    const caption = data.items.length
      ? `Items ${fmt(first)}-${fmt(last)} of ${fmt(data.count)}, in ID order`
      : "No items on this page";
    const pager = h(
      "nav",
      { class: "pager", "aria-label": "Pages of items" },
      cursor ? h("a", { href: treeHref(codes) }, "First page") : null,
      data.next_cursor ? h("a", { href: treeHref(codes, data.next_cursor, page + 1), rel: "next" }, "Next page") : null,
    );
    return h(
      "section",
      { "aria-labelledby": "items-h" },
      h("h3", { id: "items-h" }, `Items (page ${page})`),
      data.items.length ? itemsTable(data.items, caption) : h("p", {}, caption),
      pager,
    );
  }

  // --- search an item ------------------------------------------------------------------------------

  async function itemView(route) {
    const id = route.arg;
    const out = [
      heading(id ? `Item ${id}` : "Search an item"),
      searchForm({
        id: "item-input",
        name: "item",
        label: "Item id",
        value: id,
        placeholder: "e.g. 42",
        button: "Find",
        onsubmit: (v) => go(v ? itemHref(v) : "#/item"),
      }),
    ];
    if (!id) return out;
    let item;
    try {
      item = await api(`/v1/items/${enc(id)}`);
    } catch (err) {
      out.push(errorBox(err));
      return out;
    }
    out.push(itemCard(item, "Its semantic ID"));
    // siblings: the items under the base code's parent (with few collisions the full base code holds the item alone)
    const parent = item.semantic_id.slice(0, Math.max(1, item.semantic_id.length - 2));
    const [siblings, near] = await Promise.allSettled([
      api(`/v1/prefixes/${dashed(parent)}?limit=${SIBLINGS}`),
      api("/v1/resolve", { semantic_id: item.semantic_id, k: NEAREST + 1 }),
    ]);
    const sib = [h("h3", { id: "siblings-h" }, `Siblings under ${dashed(parent)}`)];
    if (siblings.status === "rejected") sib.push(errorBox(siblings.reason));
    else {
      const data = siblings.value;
      const shown = data.items.length < data.count ? ` (first ${fmt(data.items.length)})` : "";
      sib.push(itemsTable(data.items, `${fmt(data.count)} items share the prefix ${dashed(parent)}${shown}`));
      sib.push(h("p", {}, h("a", { href: treeHref(parent) }, `Browse ${dashed(parent)} in the tree`)));
    }
    out.push(h("section", { "aria-labelledby": "siblings-h" }, sib));
    const nb = [h("h3", { id: "nearest-h" }, "Nearest items")];
    if (near.status === "rejected") nb.push(errorBox(near.reason));
    else {
      const others = near.value.nearest.filter((n) => String(n.item_id) !== String(item.item_id)).slice(0, NEAREST);
      nb.push(
        itemsTable(
          others.map((n) => n.item),
          `The ${fmt(others.length)} items whose code vectors are nearest this item's`,
          { head: ["Distance"], cells: (_, i) => [others[i].distance.toFixed(4)] },
        ),
      );
    }
    out.push(h("section", { "aria-labelledby": "nearest-h" }, nb));
    return out;
  }

  // --- resolve a tuple -----------------------------------------------------------------------------

  // "12-201-7-0", "[12, 201, 7, 0]", "(12 201 7 0)" or "<a_12><b_201><c_7><d_0>" -> [12, 201, 7, 0].
  // A part that is not a plain integer is passed on as it is, so the API names what is wrong with it.
  function parseTuple(text) {
    const s = text.trim();
    const tokens = s.match(/<[a-z]_(\d+)>/g);
    if (tokens && tokens.join("") === s) return tokens.map((t) => Number(t.slice(3, -1)));
    const inner = s.replace(/^[[(]\s*/, "").replace(/\s*[\])]$/, "");
    const parts = /[\s,]/.test(inner) ? inner.split(/[\s,]+/) : inner.split("-");
    return parts
      .filter((p) => p !== "")
      .map((p) => (/^-?\d+$/.test(p) && Number.isSafeInteger(Number(p)) ? Number(p) : p));
  }

  async function resolveView(route) {
    const text = route.arg;
    const out = [
      heading("Resolve a tuple"),
      searchForm({
        id: "tuple-input",
        name: "tuple",
        label: "Semantic ID or prefix, e.g. a generator's output (12-201-7-0, [12, 201, 7, 0] or <a_12><b_201>)",
        value: text,
        placeholder: "12-201-7-0",
        button: "Resolve",
        onsubmit: (v) => go(v ? `#/resolve/${enc(v)}` : "#/resolve"),
      }),
    ];
    if (!text) return out;
    const codes = parseTuple(text);
    let res;
    try {
      res = await api("/v1/resolve", { semantic_id: codes, k: NEAREST });
    } catch (err) {
      out.push(errorBox(err));
      return out;
    }
    const shown = codes.join("-");
    const L = await levels();
    if (res.exact) out.push(itemCard(res.exact, `Exact: ${shown} is item ${res.exact.item_id}`));
    else if (codes.length <= L) {
      out.push(h("p", { class: "notice", role: "status" }, `${shown} is a prefix, not a full ID; the nearest valid IDs:`));
    } else out.push(h("p", { class: "notice", role: "status" }, `No item holds ${shown}; the nearest valid IDs:`));
    out.push(
      h(
        "section",
        { "aria-labelledby": "resolved-h" },
        h("h3", { id: "resolved-h" }, "Nearest valid IDs"),
        itemsTable(
          res.nearest.map((n) => n.item),
          `The ${fmt(res.nearest.length)} IDs whose code vectors are nearest ${shown}`,
          { head: ["Distance"], cells: (_, i) => [res.nearest[i].distance.toFixed(4)] },
        ),
      ),
    );
    return out;
  }

  // --- map ---------------------------------------------------------------------------------------

  // a first code's colour: hues spread by the golden angle, so neighbouring codes differ
  const codeColour = (code) => `hsl(${((code * 137.508) % 360).toFixed(1)}, 62%, 44%)`;

  async function mapView(route) {
    const seed = route.params.get("seed") || "0";
    const out = [
      heading("Map of a sample"),
      searchForm({
        id: "seed-input",
        name: "seed",
        label: "Seed of the sample (the same seed draws the same items)",
        value: seed,
        placeholder: "0",
        button: "Draw",
        onsubmit: (v) => go(`#/map?seed=${enc(v || "0")}`),
      }),
    ];
    const [mapped, root] = await Promise.allSettled([api(`/v1/map?seed=${enc(seed)}`), api("/v1/explain")]);
    if (mapped.status === "rejected") {
      out.push(errorBox(mapped.reason));
      return out;
    }
    const data = mapped.value;
    const points = data.points;
    const W = 900;
    const H = 560;
    const M = 12;
    const xs = points.map((p) => p.x);
    const ys = points.map((p) => p.y);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const scale = Math.min((W - 2 * M) / (x1 - x0 || 1), (H - 2 * M) / (y1 - y0 || 1)); // one scale: distances stay true
    const px = (x) => M + (x - x0) * scale + (W - 2 * M - (x1 - x0) * scale) / 2;
    const py = (y) => H - M - (y - y0) * scale - (H - 2 * M - (y1 - y0) * scale) / 2;
    const drawn = svg(
      "svg",
      { class: "map", viewBox: `0 0 ${W} ${H}`, role: "group", "aria-label": `Map of ${points.length} items, coloured by first code` },
      svg("rect", { x: 0, y: 0, width: W, height: H, class: "map-bg" }),
      points.map((p) =>
        svg(
          "a",
          // out of the tab order (thousands of points): the legend and the tree reach the same items by keyboard
          { href: itemHref(p.item_id), class: "point", tabindex: -1, "data-item": p.item_id, "data-code": p.semantic_id[0] },
          svg("circle", { cx: px(p.x).toFixed(1), cy: py(p.y).toFixed(1), r: 4, fill: codeColour(p.semantic_id[0]) }),
          svg("title", {}, `${p.caption || p.item_id} (${dashed(p.semantic_id)})`),
        ),
      ),
    );
    const ev = data.explained_variance.map((v) => pct(v, 0)).join(" and ");
    out.push(
      h(
        "p",
        { class: "hint" },
        `${fmt(points.length)} of ${fmt(data.items)} items, drawn with seed ${data.seed}; their code vectors on their two`,
        ` principal components (${ev} of the sample's variance). Colour: first code. Click a point to open its item.`,
      ),
    );
    out.push(h("div", { class: "map-wrap" }, drawn));
    const labels = new Map();
    if (root.status === "fulfilled") for (const m of root.value.children) labels.set(m.prefix[0], m.label);
    const counts = new Map();
    for (const p of points) counts.set(p.semantic_id[0], (counts.get(p.semantic_id[0]) || 0) + 1);
    const top = [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(0, LEGEND);
    out.push(
      h(
        "ul",
        { class: "legend", "aria-label": "First codes on the map" },
        top.map(([code, n]) => {
          const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
          swatch.style.background = codeColour(code);
          return h(
            "li",
            {},
            swatch,
            h("a", { href: treeHref([code]) }, `code ${code}`),
            labels.get(code) ? ` ${labels.get(code)}` : "",
            h("span", { class: "muted" }, ` (${fmt(n)})`),
          );
        }),
      ),
    );
    return out;
  }

  // --- health --------------------------------------------------------------------------------------

  async function healthView() {
    const out = [heading("Index health")];
    let s;
    try {
      s = await api("/v1/stats");
    } catch (err) {
      out.push(errorBox(err));
      return out;
    }
    const b = s.base_codes;
    const fig = (id, label, value, note) =>
      h("div", { class: "figure" }, h("dt", {}, label), h("dd", { id }, value), note ? h("dd", { class: "note" }, note) : null);
    out.push(
      h(
        "dl",
        { class: "figures", "aria-label": "Headline figures" },
        fig("stat-items", "Items", fmt(s.items)),
        fig("stat-collision", "Collision rate", pct(b.collision_rate, 2), "1 - distinct base codes / items"),
        fig("stat-distinct", "Distinct base codes", fmt(b.distinct)),
        fig("stat-largest", "Largest bucket", fmt(b.largest_bucket), "items sharing one base code"),
        fig("stat-fallback", "Fallback items", fmt(s.fallback), s.items ? `${pct(s.fallback / s.items, 2)} of items` : null),
        fig("stat-retired", "Retired IDs", fmt(s.retired), "reserved by re-coding"),
      ),
    );
    const rows = s.levels.map((lv) => {
      const bar = h("span", { class: "bar", "aria-hidden": "true" });
      bar.style.width = pct(lv.usage);
      return h(
        "tr",
        {},
        h("th", { scope: "row" }, lv.dedup ? `${lv.position} (dedup digit)` : `Level ${lv.position}`),
        h("td", { class: "num" }, `${fmt(lv.codes_used)} / ${fmt(lv.codebook_size)}`),
        h("td", {}, h("span", { class: "usage" }, h("span", { class: "track" }, bar), pct(lv.usage))),
        h("td", { class: "num" }, fmt(lv.prefixes)),
        h("td", { class: "num" }, lv.mean_fanout.toFixed(2)),
      );
    });
    out.push(
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "levels" },
          h("caption", {}, "Per-position usage of the served IDs"),
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Position", "Codes used", "Usage", "Prefixes (tree nodes)", "Mean fan-out"].map((c) => h("th", { scope: "col" }, c)),
            ),
          ),
          h("tbody", {}, rows),
        ),
      ),
    );
    if (s.report) {
      const when = s.report.items === null ? "" : ` (made when the index had ${fmt(s.report.items)} items)`;
      out.push(h("p", {}, h("a", { href: apiUrl(s.report.url), id: "report-link" }, "Evaluation report"), when));
    } else {
      out.push(
        h("p", { class: "hint" }, "No evaluation report linked: run `semid evaluate` and serve with SEMID_REPORT_DIR set to its output."),
      );
    }
    out.push(h("p", { class: "hint" }, "Checkpoint fingerprint: ", h("code", {}, s.fingerprint)));
    return out;
  }

  // --- routing -------------------------------------------------------------------------------------

  const VIEWS = { tree: treeView, item: itemView, resolve: resolveView, map: mapView, health: healthView };

  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, "");
    const q = raw.indexOf("?");
    const path = q < 0 ? raw : raw.slice(0, q);
    const params = new URLSearchParams(q < 0 ? "" : raw.slice(q + 1));
    const slash = path.indexOf("/");
    const name = (slash < 0 ? path : path.slice(0, slash)) || "tree";
    let arg = slash < 0 ? "" : path.slice(slash + 1);
    try {
      arg = decodeURIComponent(arg);
    } catch (err) {
      // keep the raw text: the API will say what is wrong with it
    }
    return { name, arg, params };
  }

  async function render(focus) {
    const gen = ++generation;
    const route = parseHash();
    for (const link of document.querySelectorAll("nav a[data-view]")) {
      if (link.dataset.view === route.name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    view.setAttribute("aria-busy", "true");
    let nodes;
    try {
      const fn = VIEWS[route.name];
      nodes = fn ? await fn(route) : [heading("Not found"), h("p", {}, `No view called "${route.name}".`)];
    } catch (err) {
      nodes = [heading("Something went wrong"), errorBox(err)];
    }
    if (gen !== generation) return; // a later navigation won
    view.replaceChildren(...nodes);
    view.removeAttribute("aria-busy");
    const title = view.querySelector("h2");
    document.title = `${title ? title.textContent : "semid"} - semid explorer`;
    if (focus && title) title.focus();
  }

  function showFatal(err) {
    view.removeAttribute("aria-busy");
    view.replaceChildren(heading("Something went wrong"), errorBox(err));
  }

  window.addEventListener("hashchange", () => render(true));
  window.addEventListener("error", (event) => showFatal(event.error || event.message));
  window.addEventListener("unhandledrejection", (event) => showFatal(event.reason));
  render(false);
})();
