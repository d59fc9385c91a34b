// Drives the dashboard in headless Chromium for tests/e2e/dashboard.rs (PROTOCOL.md §17).
// Talks to the Rust test over stdio: prints `KEY value…` lines, and waits for a line on
// stdin where the test must act (record turns) before the page is checked again.
//
//   node dashboard.mjs --url URL#host_token=… --run RUN --expect ID,ID --shots DIR
//
// Env: CAR_TEST_CHROMIUM (the browser), CAR_TEST_NODE_MODULES (where playwright-core is).
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import path from "node:path";

const require = createRequire(path.join(process.env.CAR_TEST_NODE_MODULES, "x.js"));
const { chromium } = require("playwright-core");

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith("--")) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const WAIT = 15000;
const reader = createInterface({ input: process.stdin });
const lines = reader[Symbol.asyncIterator]();
const say = (line) => process.stdout.write(`${line}\n`);
const fail = (why) => { throw new Error(why); };

let errors = [];
const browser = await chromium.launch({
  executablePath: process.env.CAR_TEST_CHROMIUM,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const writes = [];
  page.on("request", (request) => {
    if (request.method() !== "GET") writes.push(`${request.method()} ${request.url()}`);
  });
  errors = [];
  const traffic = (globalThis.traffic = []);
  page.on("response", (r) => traffic.push(`${r.status()} ${r.url()}`));
  page.on("requestfailed", (r) => traffic.push(`FAILED ${r.url()} ${r.failure()?.errorText}`));
  page.on("pageerror", (err) => errors.push(String(err)));
  page.on("console", (msg) => { if (msg.type() === "error") errors.push(msg.text()); });

  const started = Date.now();
  await page.goto(args.url);
  await page.waitForSelector("body[data-ready=true]", { timeout: WAIT });
  const ready = Date.now() - started;
  const paint = await page.evaluate(() =>
    performance.getEntriesByName("first-contentful-paint")[0]?.startTime ?? -1);
  say(`FIRST_PAINT_MS ${Math.round(paint)} READY_MS ${ready}`);

  if (page.url().includes("host_token")) fail(`the fragment is still in the URL: ${page.url()}`);
  const kept = await page.evaluate(() => sessionStorage.getItem("car.host_token"));
  if (!kept) fail("the host token was not kept in sessionStorage");

  for (const id of (args.expect || "").split(",").filter(Boolean)) {
    if (!(await page.$(`tr[data-run="${id}"]`))) fail(`run ${id} is not listed`);
  }
  const rows = await page.$$eval("#runs tbody tr", (trs) => trs.length);
  say(`ROWS ${rows}`);
  await page.screenshot({ path: path.join(args.shots, "dashboard-runs.png") });

  await page.click(`tr[data-run="${args.run}"]`);
  await page.waitForSelector(`#timeline[data-run="${args.run}"] li`, { timeout: WAIT });
  const kinds = await page.$$eval("#timeline li", (lis) => lis.map((li) => li.dataset.kind));
  say(`TIMELINE ${kinds.join(",")}`);
  const turns = kinds.filter((k) => k === "turn").length;
  await page.waitForSelector("#live.on", { timeout: WAIT });
  await page.screenshot({ path: path.join(args.shots, "dashboard-timeline.png") });

  say(`READY_FOR_TURNS ${turns}`);
  await lines.next();
  await page.waitForFunction(
    (before) => document.querySelectorAll('#timeline li[data-kind="turn"]').length > before,
    turns,
    { timeout: WAIT },
  );
  const after = await page.$$eval('#timeline li[data-kind="turn"]', (lis) => lis.length);
  say(`LIVE_TURNS ${after}`);
  await page.screenshot({ path: path.join(args.shots, "dashboard-live.png") });

  if (writes.length) fail(`the page wrote: ${writes.join("; ")}`);
  if (errors.length) fail(`the page logged errors: ${errors.join("; ")}`);
  say("DONE");
} catch (err) {
  process.stderr.write(`FAIL ${err.message}${errors.length ? ` (page errors: ${errors.join("; ")})` : ""}\n`);
  process.stderr.write(`traffic: ${globalThis.traffic?.join(" | ") ?? ""}\n`);
  process.exitCode = 1;
} finally {
  await browser.close();
  reader.close();
}
