"use strict";
// Sorts the keys' table by the column whose header is clicked: numbers and
// dates as such, text in the reader's collation; empty cells stay last.
(() => {
  const table = document.getElementById("keys");
  const body = table.tBodies[0];
  const headers = Array.from(table.tHead.rows[0].cells);
  const collator = new Intl.Collator(undefined, { numeric: true });
  const sortKey = (kind, text) => {
    if (text === "") {
      return null;
    }
    const value = kind === "number" ? Number(text) : kind === "date" ? Date.parse(text) : text;
    return Number.isNaN(value) ? null : value;
  };
  const sortBy = (th, index) => {
    const kind = th.dataset.kind;
    const order = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    const rows = Array.from(body.rows, (row, position) => ({ row, position, key: sortKey(kind, row.cells[index].textContent) }));
    rows.sort((a, b) => {
      if (a.key === null || b.key === null) {
        return a.key === b.key ? a.position - b.position : a.key === null ? 1 : -1;
      }
      const c = kind === "text" ? collator.compare(a.key, b.key) : a.key - b.key;
      return order * c || a.position - b.position;
    });
    for (const h of headers) {
      h.setAttribute("aria-sort", "none");
    }
    th.setAttribute("aria-sort", order === 1 ? "ascending" : "descending");
    const sorted = document.createDocumentFragment();
    for (const r of rows) {
      sorted.append(r.row);
    }
    body.append(sorted);
  };
  headers.forEach((th, index) => th.querySelector("button").addEventListener("click", () => sortBy(th, index)));
})();
