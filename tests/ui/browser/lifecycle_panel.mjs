// Drives a real JupyterLab in Debian's chromium (playwright-core) through the lifecycle-panel
// notebook that tests/ui/browser/test_live_chart.py writes (a windowed query over a Kafka
// topic whose partition 2 lags 40 s of event time behind the others), and prints one line
//   RESULT {...json...}
// It opens the live table's lifecycle section with a click, checks that it renders, changes
// while records come, and names partition 2 as holding the watermark back (its row and its
// sentence), and screenshots it. It exits non-zero (the reason on stderr) when a step fails.
//
// Environment: SNB_LAB_URL, SNB_TOKEN, SNB_NOTEBOOK, SNB_CELLS (JSON: {"setup": i, "show": i,
// "stop": i}), SNB_TOPIC, SNB_ARTIFACTS, SNB_SCREENSHOT (the panel's picture), SNB_CHROMIUM,
// SNB_DEADLINE_MS.
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { failed, launch, openNotebook, runCell, session, sleep, snapshot } from "./lab.mjs";

const base = process.env.SNB_LAB_URL;
const token = process.env.SNB_TOKEN;
const notebook = process.env.SNB_NOTEBOOK;
const cells = JSON.parse(process.env.SNB_CELLS);
const topic = process.env.SNB_TOPIC;
const artifacts = process.env.SNB_ARTIFACTS || "test-artifacts/browser";
const screenshot = process.env.SNB_SCREENSHOT || join(artifacts, "lifecycle_panel.png");
const executablePath = process.env.SNB_CHROMIUM || "/usr/bin/chromium";

mkdirSync(artifacts, { recursive: true });
mkdirSync(dirname(screenshot), { recursive: true });

const result = { steps: [], consoleErrors: [], pageErrors: [], texts: [] };
const run = session(result, Number(process.env.SNB_DEADLINE_MS || 60000));
const { log, until } = run;
const browser = await launch(executablePath);

let page;
let exitCode = 0;
try {
  page = await openNotebook(browser, { base, token, notebook, result, run });
  await runCell(page, run, cells.setup, 60000);
  log("setup cell ran");
  await runCell(page, run, cells.show);
  const cell = page.locator(".jp-Notebook .jp-Cell").nth(cells.show);
  const section = cell.locator(".streamnb-lifecycle-section");
  await until("the live table", async () => (await section.count()) > 0, 20000);
  if ((await cell.locator(".streamnb-lifecycle").count()) > 0) {
    throw new Error("the lifecycle section is open before a click (it is drawn only when open)");
  }
  await section.getByText("lifecycle:").first().click();
  log("lifecycle section clicked open");

  // what the panel shows: its sentences, its rows, the partitions it says hold the watermark
  const panelState = () =>
    cell.evaluate((node) => {
      const panel = node.querySelector(".streamnb-lifecycle");
      if (!panel) {
        return null;
      }
      const rows = Array.from(panel.querySelectorAll("tr[data-partition]"));
      return {
        text: panel.innerText,
        sentences: Array.from(panel.querySelectorAll("ul.streamnb-why li")).map((li) => li.innerText),
        holding: rows.filter((r) => r.dataset.holding === "true").map((r) => r.dataset.partition),
        rows: rows.map((r) => [r.dataset.source, r.dataset.partition, r.dataset.idle]),
        visible: panel.offsetParent !== null,
      };
    });
  const first = await until("the panel to name partition 2", async () => {
    const s = await panelState();
    return s && s.visible && s.holding.length === 1 && s.holding[0] === "2" ? s : null;
  }, 30000);
  result.firstPanel = first;
  log(`panel: ${JSON.stringify(first.sentences)}`);
  const later = await until("the panel's text to change", async () => {
    const s = await panelState();
    return s && s.text !== first.text ? s : null;
  }, 15000);
  result.laterPanel = later;
  result.rows = later.rows;
  log(`changed: ${JSON.stringify(later.sentences)}`);
  const behind = new RegExp(
    `^partition 2 of ${topic} is at \\d\\d:\\d\\d:\\d\\d(\\.\\d+)?, [\\d.]+ s behind the others$`,
  );
  result.namesPartition2 = later.sentences.some((s) => behind.test(s));
  result.holding = later.holding;
  await sleep(300);
  if (await snapshot(page, section, screenshot, result, log)) {
    result.screenshot = screenshot;
  }
  await runCell(page, run, cells.stop);
  log("stopped");
} catch (err) {
  exitCode = 1;
  await failed(err, result, page, join(artifacts, "lifecycle_failure.png"));
} finally {
  result.totalMs = Date.now() - run.started;
  await browser.close();
}
console.log(`RESULT ${JSON.stringify(result)}`);
process.exit(exitCode);
