// Drives a real JupyterLab in Debian's chromium (playwright-core) through the live-chart
// notebook that tests/ui/browser/test_live_chart.py writes, and prints one line
//   RESULT {...json...}
// with what it measured. It exits non-zero (with the reason on stderr) when a step fails.
//
// Environment: SNB_LAB_URL (http://127.0.0.1:PORT), SNB_TOKEN, SNB_NOTEBOOK (file name),
// SNB_CELLS (JSON: {"setup": i, "chart": i, "pause": i, "resume": i, "show": i, "stop": i}),
// SNB_ARTIFACTS (screenshot folder), SNB_CHROMIUM (default /usr/bin/chromium),
// SNB_DEADLINE_MS (total budget, default 100000).
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import {
  failed,
  launch,
  notTaken,
  openNotebook,
  runCell as runCellIn,
  session,
  sleep,
  snapshot,
  snapshotPage,
} from "./lab.mjs";

const base = process.env.SNB_LAB_URL;
const token = process.env.SNB_TOKEN;
const notebook = process.env.SNB_NOTEBOOK;
const cells = JSON.parse(process.env.SNB_CELLS);
const artifacts = process.env.SNB_ARTIFACTS || "test-artifacts/browser";
const executablePath = process.env.SNB_CHROMIUM || "/usr/bin/chromium";

mkdirSync(artifacts, { recursive: true });

const result = { steps: [], consoleErrors: [], pageErrors: [] };
const run = session(result, Number(process.env.SNB_DEADLINE_MS || 100000));
const { log, until } = run;
const browser = await launch(executablePath);

let page;
let exitCode = 0;
try {
  page = await openNotebook(browser, { base, token, notebook, result, run });
  const runCell = (index, timeoutMs) => runCellIn(page, run, index, timeoutMs);

  // the chart in cell i's output: its <svg> (tagged by the widget), marks, the widget's counters
  const chartState = (index = cells.chart) =>
    page.evaluate((i) => {
      const cell = window.jupyterapp.shell.currentWidget.content.widgets[i];
      const svgs = cell.node.querySelectorAll("svg[data-streamnb-chart]");
      if (svgs.length === 0) {
        return { svgs: 0, marks: 0, updates: 0, rows: 0 };
      }
      const svg = svgs[0];
      const root = svg.closest(".streamnb-chart");
      const tagged = document.querySelector("svg[data-test-tag]");
      return {
        svgs: svgs.length,
        marks: svg.querySelectorAll(".role-mark > path").length,
        tagged: svg.getAttribute("data-test-tag"),
        taggedConnected: tagged !== null && tagged.isConnected && tagged === svg,
        updates: Number(root ? root.dataset.snUpdates : -1),
        rows: Number(root ? root.dataset.snRows : -1),
        shapes: Array.from(svg.querySelectorAll(".role-mark > path"))
          .map((p) => p.getAttribute("d") || p.getAttribute("transform"))
          .join("|").length,
      };
    }, index);

  const shot = async (name, index = cells.chart) => {
    const path = join(artifacts, `${name}.png`);
    const out = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".streamnb-chart").first();
    if ((await out.count()) === 0) {
      notTaken(path, `cell ${index} has no chart output`, result, log);
    } else if (await snapshot(page, out, path, result, log)) {
      result[`screenshot_${name}`] = path;
    }
  };

  // -- setup, then the chart cell: time to the first marks -----------------------------------
  await runCell(cells.setup, 60000);
  log("setup cell ran");
  const t0 = Date.now();
  await runCell(cells.chart);
  result.chartCellMs = Date.now() - t0;
  log(`chart cell ran in ${result.chartCellMs} ms`);
  const first = await until("the first marks", async () => {
    const s = await chartState();
    return s.marks > 0 ? s : null;
  }, 30000, 20);
  result.firstUpdateMs = Date.now() - t0;
  log(`first marks after ${result.firstUpdateMs} ms: ${JSON.stringify(first)}`);

  // -- updates land in the same <svg> ----------------------------------------------------------
  await page.evaluate((i) => {
    const cell = window.jupyterapp.shell.currentWidget.content.widgets[i];
    cell.node.querySelector("svg[data-streamnb-chart]").setAttribute("data-test-tag", "first");
  }, cells.chart);
  const tagged = await chartState();
  result.marksAtTag = tagged.marks;
  const grown = await until("more marks in the same svg", async () => {
    const s = await chartState();
    return s.marks >= tagged.marks + 20 && s.updates > tagged.updates + 2 ? s : null;
  }, 20000);
  if (grown.tagged !== "first" || !grown.taggedConnected || grown.svgs !== 1) {
    throw new Error(`the chart was re-drawn, not updated in place: ${JSON.stringify(grown)}`);
  }
  result.marksLater = grown.marks;
  result.updatesLater = grown.updates;
  log(`same svg, marks ${tagged.marks} -> ${grown.marks}, updates ${grown.updates}`);
  await shot("live_chart_running");

  // -- pause: nothing changes; resume: changes again ------------------------------------------
  await runCell(cells.pause);
  await sleep(1500); // an in-flight batch and the last throttled update settle
  const paused1 = await chartState();
  await sleep(3000);
  const paused2 = await chartState();
  result.paused = [paused1.marks, paused2.marks];
  log(`paused: marks ${paused1.marks} -> ${paused2.marks}, updates ${paused1.updates} -> ${paused2.updates}`);
  if (paused2.marks !== paused1.marks || paused2.updates !== paused1.updates) {
    throw new Error(`updates went on while paused: ${JSON.stringify([paused1, paused2])}`);
  }
  await shot("live_chart_paused");

  await runCell(cells.resume);
  const resumed = await until("updates after resume", async () => {
    const s = await chartState();
    return s.marks > paused2.marks && s.updates > paused2.updates ? s : null;
  }, 15000);
  result.resumed = resumed.marks;
  log(`resumed: marks ${paused2.marks} -> ${resumed.marks}`);
  if (resumed.tagged !== "first" || !resumed.taggedConnected) {
    throw new Error(`the chart was re-drawn after resume: ${JSON.stringify(resumed)}`);
  }
  await shot("live_chart_resumed");

  // -- a second view of the same chart starts from the current data --------------------------
  const before = await chartState();
  await runCell(cells.again);
  const again = await until("the second view's marks", async () => {
    const s = await chartState(cells.again);
    return s.marks > 0 ? s : null;
  }, 15000);
  result.secondView = again.marks;
  log(`second view: ${again.marks} marks at once (first view had ${before.marks})`);
  if (again.marks < before.marks) {
    throw new Error(`the new view did not get the current data: ${JSON.stringify([before, again])}`);
  }
  const first2 = await chartState();
  if (first2.tagged !== "first" || !first2.taggedConnected) {
    throw new Error(`the first view was re-drawn by the second: ${JSON.stringify(first2)}`);
  }

  // -- a table (running aggregate): upserts by key change the bars in place ------------------
  await runCell(cells.keyed);
  const keyed1 = await until("the keyed chart's bars", async () => {
    const s = await chartState(cells.keyed);
    return s.marks > 0 && s.updates > 1 ? s : null;
  }, 15000);
  await page.evaluate((i) => {
    const cell = window.jupyterapp.shell.currentWidget.content.widgets[i];
    cell.node.querySelector("svg[data-streamnb-chart]").setAttribute("data-keyed-tag", "k");
  }, cells.keyed);
  const keyed2 = await until("the keyed chart to change", async () => {
    const s = await chartState(cells.keyed);
    return s.updates >= keyed1.updates + 3 && s.shapes !== keyed1.shapes ? s : null;
  }, 15000);
  const keyedTag = await page.evaluate((i) => {
    const cell = window.jupyterapp.shell.currentWidget.content.widgets[i];
    const svg = cell.node.querySelector("svg[data-streamnb-chart]");
    return svg.getAttribute("data-keyed-tag");
  }, cells.keyed);
  if (keyedTag !== "k" || keyed2.rows !== keyed2.marks) {
    throw new Error(`keyed chart: ${JSON.stringify({ keyedTag, keyed1, keyed2 })}`);
  }
  result.keyed = { bars: keyed2.marks, updates: keyed2.updates };
  log(`keyed chart: ${keyed2.marks} bars, ${keyed2.updates} updates in the same svg`);
  await shot("live_chart_keyed", cells.keyed);

  // -- max_rows: the oldest rows leave the view ----------------------------------------------
  await runCell(cells.trim);
  const trimmed = await until("the trimmed chart to hold max_rows marks", async () => {
    const s = await chartState(cells.trim);
    return s.marks === 30 && s.rows === 30 && s.updates > 3 ? s : null;
  }, 15000);
  result.trimmed = trimmed.marks;
  log(`trimmed chart: ${trimmed.marks} marks after ${trimmed.updates} updates`);

  // -- the live table of stream.show() ---------------------------------------------------------
  {
    const state = await runCell(cells.show);
    await sleep(2000);
    const views = state.outputs.filter(
      (o) => o.data && o.data["application/vnd.jupyter.widget-view+json"],
    );
    result.showOutputs = state.outputs.map((o) => Object.keys(o.data || {}));
    log(`show cell ran: ${JSON.stringify(result.showOutputs)}`);
    const cellNode = page.locator(".jp-Notebook .jp-Cell").nth(cells.show);
    await snapshot(page, cellNode, join(artifacts, "live_table.png"), result, log);
    result.showWidget = views.length > 0;
  }

  await runCell(cells.stop);
  log("stopped");
  await snapshotPage(page, join(artifacts, "notebook.png"), result, log);
} catch (err) {
  exitCode = 1;
  await failed(err, result, page, join(artifacts, "failure.png"));
} finally {
  result.totalMs = Date.now() - run.started;
  await browser.close();
}
console.log(`RESULT ${JSON.stringify(result)}`);
process.exit(exitCode);
