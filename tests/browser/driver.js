#!/usr/bin/env node
// Headless Chromium for Dialtone's end-to-end WebRTC tests, driven by tests/src/browser.rs.
//
//   node driver.js FAKE_MIC.wav
//
// Launches /usr/bin/chromium (Debian package `chromium`) through playwright-core with a fresh
// temporary profile and Chromium's fake media devices: the microphone plays FAKE_MIC.wav in a
// loop, permission prompts are auto-accepted, loopback ICE candidates are allowed and audio
// plays without a user gesture. Then it obeys line-delimited JSON commands on stdin, one at a
// time, answering each with one JSON line on stdout:
//
//   {"id":1,"cmd":"goto","url":"http://127.0.0.1:8080/"}   -> {"id":1,"ok":true,"value":null}
//   {"id":2,"cmd":"eval","js":"1 + 1"}                      -> {"id":2,"ok":true,"value":2}
//   {"id":3,"cmd":"eval","js":"nope()"}                     -> {"id":3,"ok":false,"error":"..."}
//
// Commands: goto {url}, eval {js} (an expression, promises awaited, result as JSON),
// click {selector}, fill {selector,text}, select {selector,value},
// waitFor {js,timeoutMs} (re-evaluates the expression every 50 ms, promises awaited, until it
// is truthy; answers that value),
// screenshot {path}, close.
//
// Once Chromium is up it announces itself with {"id":0,"ok":true,"value":{"version":...}}.
// stdout carries nothing but these replies; page console lines, page errors and the driver's
// own messages go to stderr, page output prefixed "[page]". It exits (closing Chromium and
// removing the profile) on `close`, when stdin closes, or on SIGTERM/SIGINT/SIGHUP.

'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const readline = require('readline');

const CHROMIUM = '/usr/bin/chromium';
// Bound on a graceful shutdown before the driver exits anyway (Playwright's exit hook then
// kills the browser process group).
const SHUTDOWN_GRACE_MS = 5000;
// How often `waitFor` re-evaluates its condition.
const WAIT_POLL_MS = 50;

// Everything human-readable goes to stderr: stdout is the reply channel.
console.log = console.error;
console.info = console.error;
const note = (msg) => process.stderr.write(`[driver] ${msg}\n`);
const reply = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

let chromium;
try {
  ({ chromium } = require('playwright-core'));
} catch (e) {
  note(`cannot load playwright-core (${e.message}); run scripts/test.sh or \`npm ci\` in ${__dirname}`);
  process.exit(2);
}

const wav = process.argv[2];
if (!wav) {
  note('usage: node driver.js FAKE_MIC.wav');
  process.exit(2);
}
if (!fs.existsSync(wav)) {
  note(`fake microphone file not found: ${wav}`);
  process.exit(2);
}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'dialtone-chromium-'));
const removeProfile = () => {
  try {
    fs.rmSync(profile, { recursive: true, force: true });
  } catch (e) {
    note(`could not remove ${profile}: ${e.message}`);
  }
};
// Runs on every exit path, including process.exit() from a signal handler.
process.on('exit', removeProfile);

let context = null;
let page = null;
let shuttingDown = null;

function shutdown(code) {
  if (shuttingDown) return shuttingDown;
  const timer = setTimeout(() => {
    note('Chromium did not close in time; exiting anyway');
    process.exit(code);
  }, SHUTDOWN_GRACE_MS);
  shuttingDown = (async () => {
    try {
      if (context) await context.close();
    } catch (e) {
      note(`closing Chromium: ${e.message}`);
    }
    clearTimeout(timer);
    process.exit(code);
  })();
  return shuttingDown;
}

for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.on(sig, () => {
    note(`${sig}: closing`);
    shutdown(0);
  });
}

function watchPage(p) {
  p.on('console', (m) => process.stderr.write(`[page] ${m.type()}: ${m.text()}\n`));
  p.on('pageerror', (e) => process.stderr.write(`[page] uncaught: ${e.stack || e.message || e}\n`));
  p.on('crash', () => process.stderr.write('[page] crashed\n'));
}

// Polls `js` with page.evaluate until it is truthy; answers that value. (Not
// page.waitForFunction: it takes a pending promise for a truthy value, so async conditions such
// as getStats() checks would end at once.) An exception in `js` ends the wait, except while a
// navigation replaces the page's context.
async function waitFor(js, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await page.evaluate(js);
      if (last) return last;
    } catch (e) {
      const msg = String((e && e.message) || e);
      if (!/Execution context was destroyed|navigat/i.test(msg)) throw e;
    }
    const left = deadline - Date.now();
    if (left <= 0) {
      throw new Error(`Timeout ${timeoutMs}ms exceeded waiting for ${js} (last value: ${JSON.stringify(last)})`);
    }
    await new Promise((r) => setTimeout(r, Math.min(WAIT_POLL_MS, left)));
  }
}

function need(cmd, field) {
  const v = cmd[field];
  if (typeof v !== 'string') throw new Error(`${cmd.cmd}: missing string field "${field}"`);
  return v;
}

async function run(cmd) {
  switch (cmd.cmd) {
    case 'goto':
      await page.goto(need(cmd, 'url'));
      return null;
    case 'eval':
      return await page.evaluate(need(cmd, 'js'));
    case 'click':
      await page.click(need(cmd, 'selector'));
      return null;
    case 'fill':
      await page.fill(need(cmd, 'selector'), need(cmd, 'text'));
      return null;
    case 'select':
      return await page.selectOption(need(cmd, 'selector'), need(cmd, 'value'));
    case 'waitFor':
      return await waitFor(need(cmd, 'js'), Number.isFinite(cmd.timeoutMs) ? cmd.timeoutMs : 30000);
    case 'screenshot':
      await page.screenshot({ path: need(cmd, 'path') });
      return null;
    case 'close':
      return null;
    default:
      throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`);
  }
}

async function handle(line) {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    reply({ id: null, ok: false, error: `bad command line (not JSON): ${e.message}` });
    return;
  }
  const id = cmd && Number.isInteger(cmd.id) ? cmd.id : null;
  try {
    const value = await run(cmd);
    reply({ id, ok: true, value: value === undefined ? null : value });
  } catch (e) {
    reply({ id, ok: false, error: String((e && e.message) || e) });
  }
  if (cmd && cmd.cmd === 'close') await shutdown(0);
}

(async () => {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    // The driver handles signals itself so the profile is removed.
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${wav}`,
      '--allow-loopback-in-peer-connection',
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  page = context.pages()[0] || (await context.newPage());
  watchPage(page);
  context.on('page', watchPage);
  context.on('close', () => {
    if (!shuttingDown) {
      note('Chromium went away');
      shutdown(1);
    }
  });
  const browser = context.browser();
  reply({ id: 0, ok: true, value: { version: browser ? browser.version() : null, profile } });

  // Commands run strictly one after another, in arrival order.
  let queue = Promise.resolve();
  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  rl.on('line', (line) => {
    if (line.trim() === '') return;
    queue = queue.then(() => handle(line));
  });
  rl.on('close', () => {
    queue.then(() => shutdown(0));
  });
})().catch((e) => {
  note(`launch failed: ${(e && e.stack) || e}`);
  reply({ id: 0, ok: false, error: `launching Chromium: ${(e && e.message) || e}` });
  shutdown(1);
});
