// streamnb live chart: the anywidget front end of streamnb.notebook.chart.
//
// It embeds the chart with vega-embed ONCE, then applies every update from the kernel in place
// with view.change(dataset, changeset), one change at a time (a queue: the next change starts
// when the previous one has finished rendering). The <svg> element and the chart's signals
// (zoom, hover, selections) therefore survive updates.
//
// This file has no imports: vl_convert.javascript_bundle() bundles it with vega-embed, vega
// and vega-lite into static/chart_widget.bundle.js (`vegaEmbed` is provided by the bundler).
// Regenerate the bundle after editing: python -m streamnb.notebook.chart --build-bundle
//
// Messages from the kernel (msg:custom), each with a sequence number `seq`:
//   {type: "reset",  seq, rows, keys?}       replace the whole dataset (keys: upsert mode)
//   {type: "append", seq, rows}              add rows; drop the oldest beyond max_rows
//   {type: "upsert", seq, keys, rows, deletes} replace rows by key; remove deleted keys
// A view that has missed a message (or is new) asks for a snapshot: {type: "hello"}.

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "streamnb-chart";
  root.dataset.snUpdates = "0";
  root.dataset.snRows = "0";
  el.appendChild(root);

  const dataset = model.get("dataset");
  const maxRows = model.get("max_rows");
  const options = Object.assign(
    { renderer: model.get("renderer"), mode: "vega-lite" },
    structuredClone(model.get("embed_options") || {}),
  );

  let api = null; // the vega-embed result, once embedded
  let disposed = false;
  let seq = null; // sequence number of the last applied message; null before the first reset
  let live = []; // append mode: the tuples in the view, oldest first
  let byKey = new Map(); // upsert mode: key -> tuple
  let updates = 0;
  const queue = [];
  let pumping = false;

  const showError = (error) => {
    console.warn("streamnb chart:", error);
    const box = document.createElement("pre");
    box.className = "streamnb-chart-error";
    box.textContent = "streamnb chart: " + (error && error.message ? error.message : error);
    root.appendChild(box);
  };

  const hello = () => {
    if (!disposed) {
      model.send({ type: "hello" });
    }
  };

  const apply = async (msg) => {
    const view = api.view;
    let changes;
    if (msg.type === "reset") {
      const rows = msg.rows || [];
      changes = view.changeset().remove(() => true).insert(rows);
      if (msg.keys) {
        byKey = new Map(msg.keys.map((k, i) => [k, rows[i]]));
        live = [];
      } else {
        live = rows.slice();
        byKey = new Map();
      }
    } else if (seq === null || msg.seq !== seq + 1) {
      if (seq !== null) {
        seq = null; // out of step: ignore deltas until the snapshot arrives
        hello();
      }
      return;
    } else if (msg.type === "append") {
      const rows = msg.rows || [];
      changes = view.changeset().insert(rows);
      for (const row of rows) {
        live.push(row);
      }
      if (live.length > maxRows) {
        changes = changes.remove(live.splice(0, live.length - maxRows));
      }
    } else if (msg.type === "upsert") {
      changes = view.changeset();
      const gone = [];
      for (const key of msg.deletes || []) {
        const old = byKey.get(key);
        if (old !== undefined) {
          gone.push(old);
          byKey.delete(key);
        }
      }
      const rows = msg.rows || [];
      msg.keys.forEach((key, i) => {
        const old = byKey.get(key);
        if (old !== undefined) {
          gone.push(old);
        }
        byKey.set(key, rows[i]);
      });
      changes = changes.remove(gone).insert(rows);
    } else {
      return;
    }
    seq = msg.seq;
    await view.change(dataset, changes).runAsync();
    updates += 1;
    root.dataset.snUpdates = String(updates);
    root.dataset.snRows = String(byKey.size || live.length);
  };

  const pump = async () => {
    pumping = true;
    try {
      while (queue.length && !disposed) {
        const msg = queue.shift();
        try {
          await apply(msg);
        } catch (error) {
          seq = null;
          showError(error);
        }
      }
    } finally {
      pumping = false;
    }
  };

  const onMessage = (msg) => {
    if (!msg || typeof msg.type !== "string") {
      return;
    }
    if (msg.type === "reset") {
      queue.length = 0; // a snapshot supersedes everything queued before it
    }
    queue.push(msg);
    if (api !== null && !pumping) {
      pump();
    }
  };

  model.on("msg:custom", onMessage);
  hello();

  vegaEmbed(root, structuredClone(model.get("spec")), options)
    .then((result) => {
      if (disposed) {
        result.finalize();
        return;
      }
      api = result;
      const svg = root.querySelector("svg");
      if (svg !== null) {
        svg.setAttribute("data-streamnb-chart", dataset);
      }
      if (queue.length && !pumping) {
        pump();
      }
    })
    .catch(showError);

  return () => {
    disposed = true;
    model.off("msg:custom", onMessage);
    queue.length = 0;
    if (api !== null) {
      api.finalize();
    }
  };
}

export default { render };
