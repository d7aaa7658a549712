// The gallery's page logic: filter, sort and page the cards of cards.js. No network, no library.
(function () {
  "use strict";
  const data = window.KB_GALLERY;
  const STATE_ORDER = { failed: 0, canceled: 1, running: 2, queued: 3, succeeded: 4 };
  const $ = (id) => document.getElementById(id);
  const controls = { sort: $("sort"), state: $("state"), minClip: $("min-clip"), pageSize: $("page-size") };
  let page = 0;

  // Cards without the value go last in either direction; equal values keep job order.
  function byValue(get, dir) {
    return (a, b) => {
      const x = get(a), y = get(b);
      if (x == null || y == null) return (x == null) - (y == null) || a.i - b.i;
      return (x - y) * dir || a.i - b.i;
    };
  }
  const SORTS = {
    index: (a, b) => a.i - b.i,
    "clip-desc": byValue((c) => c.clip, -1),
    "clip-asc": byValue((c) => c.clip, 1),
    "seed-asc": byValue((c) => c.seed, 1),
    "seed-desc": byValue((c) => c.seed, -1),
    state: (a, b) => (STATE_ORDER[a.state] ?? 9) - (STATE_ORDER[b.state] ?? 9) || a.i - b.i,
  };

  function el(tag, props, ...children) {
    const node = Object.assign(document.createElement(tag), props || {});
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  function thumbs(card) {
    if (!card.thumbs.length) return el("div", { className: "empty", textContent: card.state });
    const [w, h] = card.size;
    const imgs = card.thumbs.map((src, k) => {
      const img = el("img", { src, alt: card.prompt, loading: "lazy", decoding: "async", width: w, height: h });
      return el("a", { href: card.images[k], title: "full image " + (k + 1) }, img);
    });
    return imgs.length === 1 ? imgs[0] : el("div", { className: "thumbs" }, ...imgs);
  }

  function fact(name, value, cls) {
    return [el("dt", { textContent: name }), el("dd", { className: cls, textContent: value })];
  }

  function cardNode(card) {
    const node = el("article", { className: "card state-" + card.state });
    Object.assign(node.dataset, { id: card.id, state: card.state, seed: card.seed ?? "", clip: card.clip ?? "" });
    const facts = el("dl", { className: "facts" },
      ...fact("job", card.id, "job"),
      ...fact("seed", card.seed ?? "—", "seed"),
      ...fact("CLIP", card.clip == null ? "—" : card.clip.toFixed(3), "clip"),
      ...fact("state", card.state, "state"));
    const error = card.error
      ? el("p", { className: "error" }, el("code", { className: "code", textContent: card.error.code }),
           ": ", el("span", { className: "message", textContent: card.error.message }))
      : null;
    const links = el("p", { className: "links" });
    card.images.forEach((href, k) => links.append(el("a", { href, className: "image-link",
      textContent: card.images.length > 1 ? "image " + (k + 1) : "full image" })));
    if (card.meta) links.append(el("a", { href: card.meta, className: "meta-link", textContent: "metadata" }));
    node.append(thumbs(card), el("p", { className: "prompt", textContent: card.prompt || "(no prompt)" }),
      facts, error || "", links);
    return node;
  }

  function view() {
    const state = controls.state.value;
    const min = controls.minClip.value === "" ? null : Number(controls.minClip.value);
    const shown = data.cards.filter((c) => (!state || c.state === state) && (min == null || (c.clip != null && c.clip >= min)));
    return shown.sort(SORTS[controls.sort.value] || SORTS.index);
  }

  function render() {
    const shown = view();
    const size = Number(controls.pageSize.value);
    const pages = Math.max(1, Math.ceil(shown.length / size));
    page = Math.min(Math.max(0, page), pages - 1);
    $("cards").replaceChildren(...shown.slice(page * size, (page + 1) * size).map(cardNode));
    $("page-info").textContent = `page ${page + 1} of ${pages} (${shown.length} cards)`;
    $("prev").disabled = page === 0;
    $("next").disabled = page >= pages - 1;
    saveHash();
  }

  function saveHash() {
    const p = new URLSearchParams({ sort: controls.sort.value, state: controls.state.value,
      min: controls.minClip.value, size: controls.pageSize.value, page: String(page + 1) });
    history.replaceState(null, "", "#" + p);
  }

  function loadHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    if (p.get("sort") in SORTS) controls.sort.value = p.get("sort");
    if (p.has("state")) controls.state.value = p.get("state");
    if (p.has("min")) controls.minClip.value = p.get("min");
    if (p.has("size")) controls.pageSize.value = p.get("size");
    page = Math.max(0, Number(p.get("page") || 1) - 1);
  }

  function setUp() {
    $("batch").textContent = data.batch;
    const counts = {};
    for (const c of data.cards) counts[c.state] = (counts[c.state] || 0) + 1;
    $("summary").textContent = Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ") +
      ` of ${data.total} jobs, written ${data.generated}`;
    for (const s of Object.keys(STATE_ORDER).filter((s) => counts[s]))
      controls.state.append(el("option", { value: s, textContent: `${s} (${counts[s]})` }));
    const size = String(data.pageSize);
    if (![...controls.pageSize.options].some((o) => o.value === size)) controls.pageSize.append(el("option", { textContent: size }));
    controls.pageSize.value = size;
    if (data.linksExpire)
      $("note").textContent = "Links to full images and metadata are presigned and expire on " +
        new Date(data.linksExpire * 1000).toISOString() + "; run the gallery command again for new ones.";
    loadHash();
    for (const c of Object.values(controls)) c.addEventListener("change", () => { page = 0; render(); });
    $("prev").addEventListener("click", () => { page -= 1; render(); window.scrollTo(0, 0); });
    $("next").addEventListener("click", () => { page += 1; render(); window.scrollTo(0, 0); });
    render();
  }

  setUp();
})();
