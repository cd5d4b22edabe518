// What the browser scripts share: chromium (Debian's, through playwright-core), a JupyterLab
// notebook opened with its kernel idle, running a cell and waiting for it, and polling.
import { chromium } from "playwright-core";

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// a run with a time budget: log(msg) keeps timestamped steps in result.steps
export function session(result, budgetMs) {
  const started = Date.now();
  const deadline = started + budgetMs;
  return {
    started,
    deadline,
    remaining: () => Math.max(1000, deadline - Date.now()),
    log: (msg) => {
      const line = `[${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`;
      result.steps.push(line);
      console.error(line);
    },
    // polls fn() (in node) until it returns a truthy value; throws after timeoutMs
    until: async (what, fn, timeoutMs = 20000, everyMs = 100) => {
      const end = Math.min(Date.now() + timeoutMs, deadline);
      let last;
      while (Date.now() < end) {
        last = await fn();
        if (last) {
          return last;
        }
        await sleep(everyMs);
      }
      throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
    },
  };
}

export function launch(executablePath) {
  return chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-dev-shm-usage",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-default-apps",
      "--disable-extensions",
    ],
  });
}

// a page with the notebook open and its kernel idle; console and page errors go to result
export async function openNotebook(browser, { base, token, notebook, result, run }) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  const page = await context.newPage();
  page.on("console", (msg) => {
    if (msg.type() === "error") {
      result.consoleErrors.push(msg.text());
    }
  });
  page.on("pageerror", (err) => result.pageErrors.push(String(err && err.stack ? err.stack : err)));
  await page.goto(`${base}/lab/tree/${encodeURIComponent(notebook)}?token=${token}`, {
    timeout: run.remaining(),
    waitUntil: "domcontentloaded",
  });
  await page.waitForFunction(
    (name) => {
      const app = window.jupyterapp;
      const widget = app && app.shell && app.shell.currentWidget;
      const ctx = widget && widget.sessionContext;
      const kernel = ctx && ctx.session && ctx.session.kernel;
      return Boolean(
        widget &&
        widget.context &&
        widget.context.path.endsWith(name) &&
        kernel &&
        kernel.status === "idle" &&
        widget.content.widgets.length > 0
      );
    },
    notebook,
    { timeout: run.remaining(), polling: 200 },
  );
  run.log("notebook open, kernel idle");
  return page;
}

// runs cell i with notebook:run-cell-and-select-next; waits until it has run (kernel idle);
// throws with the cell's error if it raised
export async function runCell(page, run, index, timeoutMs = 30000) {
  await page.evaluate(async (i) => {
    const panel = window.jupyterapp.shell.currentWidget;
    panel.content.activeCellIndex = i;
    panel.content.widgets[i].model.executionCount = null;
    await window.jupyterapp.commands.execute("notebook:run-cell-and-select-next");
  }, index);
  const state = await run.until(
    `cell ${index} to run`,
    () =>
      page.evaluate((i) => {
        const panel = window.jupyterapp.shell.currentWidget;
        const cell = panel.content.widgets[i];
        const kernel = panel.sessionContext.session.kernel;
        if (cell.model.executionCount === null || kernel.status !== "idle") {
          return null;
        }
        const outputs = cell.model.outputs.toJSON();
        return { count: cell.model.executionCount, outputs };
      }, index),
    timeoutMs,
    50,
  );
  const errors = state.outputs.filter((o) => o.output_type === "error");
  if (errors.length) {
    throw new Error(`cell ${index} failed: ${errors.map((e) => `${e.ename}: ${e.evalue}`)}`);
  }
  return state;
}

// a screenshot of one element of a live page, kept as a test artifact; true once taken.
// locator.screenshot waits for the element to keep its box for two animation frames, which a
// cell among charts that redraw many times a second may never do on a loaded machine; this
// scrolls the element into view and cuts the page to its box (within the viewport) at that
// moment. A busy renderer can still keep a screenshot from being taken at all: after
// SNAPSHOT_MS the artifact is given up and logged (result.missedScreenshots), and the run goes
// on, since no assertion rests on a picture.
export const SNAPSHOT_MS = 10000;

export async function snapshot(page, locator, path, result, log) {
  return keep(path, result, log, async () => {
    await locator.evaluate((el) => el.scrollIntoView({ block: "nearest" }), null, {
      timeout: SNAPSHOT_MS,
    });
    const box = await locator.boundingBox({ timeout: SNAPSHOT_MS });
    const view = page.viewportSize();
    if (!box || !view) {
      throw new Error("no box");
    }
    const x = Math.max(0, box.x);
    const y = Math.max(0, box.y);
    const width = Math.min(box.x + box.width, view.width) - x;
    const height = Math.min(box.y + box.height, view.height) - y;
    if (width < 1 || height < 1) {
      throw new Error(`out of view: ${JSON.stringify(box)}`);
    }
    await page.screenshot({ path, clip: { x, y, width, height }, timeout: SNAPSHOT_MS });
  });
}

// the whole page as a test artifact, best-effort as snapshot is; true once taken
export async function snapshotPage(page, path, result, log) {
  return keep(path, result, log, () =>
    page.screenshot({ path, fullPage: true, timeout: SNAPSHOT_MS }),
  );
}

// take a screenshot with `take`; one not taken is logged in result.missedScreenshots
async function keep(path, result, log, take) {
  try {
    await take();
    return true;
  } catch (err) {
    missed(path, String(err && err.message ? err.message : err).split("\n")[0], result, log);
    return false;
  }
}

function missed(path, why, result, log) {
  (result.missedScreenshots ||= []).push(`${path}: ${why}`);
  log(`screenshot ${path} not taken: ${why}`);
}

// a screenshot that could not even be tried (nothing to take): logged as one not taken
export const notTaken = missed;

// a failed run: its error in the result, and a screenshot of the page when there is one
export async function failed(err, result, page, screenshotPath) {
  result.error = String(err && err.stack ? err.stack : err);
  console.error(`FAILED: ${result.error}`);
  if (page) {
    try {
      await page.screenshot({ path: screenshotPath, fullPage: true, timeout: SNAPSHOT_MS });
    } catch {
      // the page is gone: nothing to keep
    }
  }
}
