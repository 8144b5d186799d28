"""Open a local HTML file in headless Chromium and report facts a test can assert on.

`inspect_page(path)` drives Debian's chromium over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: fd 3 in, fd 4 out, NUL-terminated JSON): no Python dependency, no
port, no websocket. Nothing is blocked: network requests are recorded and, without internet,
simply fail. Each call starts its own browser in a temp profile and kills it before returning.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import tempfile
import time
from pathlib import Path

TIMEOUT_S = 60.0
FIX = "install Debian's chromium: apt-get install -y chromium"
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")  # never leave the machine

# Evaluated in the page after load; W and H are the viewport size.
_COLLECT_JS = r"""((W, H) => {
  const desc = (el, r) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + (typeof el.className === 'string'
    && el.className.trim() ? '.' + el.className.trim().split(/\s+/).join('.') : '') + ` width=${Math.round(r.width)} right=${Math.round(r.right)}`;
  // Content inside an ancestor that scrolls horizontally (overflow-x auto/scroll) and itself fits
  // is reachable, so it is not reported; overflow hidden/clip cuts content off, so that still is.
  const scrollable = el => { for (let a = el.parentElement; a && a !== document.body; a = a.parentElement)
    if (['auto', 'scroll'].includes(getComputedStyle(a).overflowX)) return a.getBoundingClientRect().right <= W;
    return false; };
  const tooWide = [];
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if ((r.right > W || r.width > W) && !scrollable(el)) tooWide.push(desc(el, r));
  }
  const sw = document.documentElement.scrollWidth;
  if (sw > W) tooWide.push(`document scrollWidth=${sw}`);
  const images = [...document.images].map(i => ({src: (i.getAttribute('src') || '').slice(0, 80),
                                                 complete: i.complete, natural_width: i.naturalWidth}));
  const s = document.getElementById('summary');
  const tops = s ? {summary: {top: s.getBoundingClientRect().top, text: s.innerText.slice(0, 500)}} : {};
  // Visible text nodes with a line box starting above H; a node straddling H is cut word by word,
  // so one long paragraph does not count as first-screen text as a whole.
  const above = rs => [...rs].some(q => q.width > 0 && q.top < H);
  const range = document.createRange(), parts = [];
  const walker = document.createTreeWalker(document.body || document.documentElement, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(), last = null; n; n = walker.nextNode()) {
    range.selectNodeContents(n);
    if (!n.data.trim() || getComputedStyle(n.parentElement).visibility !== 'visible' || !above(range.getClientRects())) continue;
    let text = n.data;
    if (range.getBoundingClientRect().bottom > H) {
      text = n.data.match(/^\s*/)[0];
      for (const m of n.data.matchAll(/\S+\s*/g)) {
        range.setStart(n, m.index); range.setEnd(n, m.index + m[0].length);
        if (!above(range.getClientRects())) break;
        text += m[0];
      }
    }
    let block = n.parentElement;  // start a new line whenever the enclosing block changes
    while (block.parentElement && getComputedStyle(block).display.startsWith('inline')) block = block.parentElement;
    if (last && block !== last) parts.push('\n');
    last = block; parts.push(text);
  }
  const first = parts.join('').replace(/[^\S\n]+/g, ' ').replace(/ *\n\s*/g, '\n').trim();
  return {images, too_wide: tooWide, element_tops: tops, first_screen_text: first};
})"""


class _Pipe:
    """A minimal CDP client on chromium's debugging pipe; every read honours one deadline."""
    def __init__(self, rfd: int, wfd: int, deadline: float, log: Path, url: str):
        self.rfd, self.wfd, self.deadline, self.log, self.url = rfd, wfd, deadline, log, url
        self.buf, self.events, self.next_id = b"", [], 0

    def read(self, until: float | None = None) -> dict | None:
        """The next message, or None if `until` passes first; past the deadline, TimeoutError."""
        while b"\0" not in self.buf:
            now = time.monotonic()
            if now >= self.deadline:
                raise TimeoutError(f"headless Chromium did not finish with {self.url} within {TIMEOUT_S:.0f} s")
            if until is not None and now >= until:
                return None
            if select.select([self.rfd], [], [], min(until or self.deadline, self.deadline) - now)[0]:
                if not (chunk := os.read(self.rfd, 1 << 20)):
                    tail = self.log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"chromium exited unexpectedly; its output ends with:\n{tail}")
                self.buf += chunk
        msg, _, self.buf = self.buf.partition(b"\0")
        return json.loads(msg)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        os.write(self.wfd, json.dumps({"id": self.next_id, "method": method, "params": params,
                                       **({"sessionId": session} if session else {})}).encode() + b"\0")
        while (reply := self.read()).get("id") != self.next_id:
            self.events.append(reply)
        if "error" in reply:
            raise RuntimeError(f"CDP {method} failed: {reply['error']}")
        return reply["result"]

    def close(self, grace: float = 3.0) -> None:
        """Ask the browser to quit, so it reaps its own children; wait for EOF at most `grace` s."""
        try:
            os.write(self.wfd, b'{"id": 0, "method": "Browser.close"}\0')
            end = time.monotonic() + grace
            while (left := end - time.monotonic()) > 0 and select.select([self.rfd], [], [], left)[0]:
                if not os.read(self.rfd, 1 << 20):
                    return
        except OSError:  # already gone
            pass


def _console_error(e: dict) -> str | None:
    m, p = e.get("method"), e.get("params", {})
    if m == "Runtime.consoleAPICalled" and p["type"] == "error":
        return " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
    if m == "Runtime.exceptionThrown":
        return p["exceptionDetails"].get("exception", {}).get("description") or p["exceptionDetails"]["text"]
    if m == "Log.entryAdded" and p["entry"]["level"] == "error":  # e.g. failed loads, CORS
        return f"{p['entry']['text']} {p['entry'].get('url', '')}".strip()
    return None


def inspect_page(html_path, width: int = 1280, height: int = 800) -> dict:
    exe = shutil.which("chromium", path=os.environ.get("PATH", "") + os.pathsep + "/usr/bin")
    if exe is None:
        raise RuntimeError(f"chromium not found; {FIX}")
    url = Path(html_path).resolve().as_uri()
    deadline = time.monotonic() + TIMEOUT_S
    with tempfile.TemporaryDirectory(prefix="distill-chromium-", ignore_cleanup_errors=True) as tmp:
        log, (to_r, to_w), (from_r, from_w) = Path(tmp, "chromium.log"), os.pipe(), os.pipe()
        try:
            # posix_spawn, not Popen: it alone puts the pipe ends on fds 3 and 4 without a preexec_fn
            # (unsafe once torch has started threads). setsid: killpg then reaches every child.
            pid = os.posix_spawn(exe, [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                       "--no-first-run", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe",
                                       f"--user-data-dir={tmp}/profile", "about:blank"], os.environ, setsid=True,
                                 file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                               (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT, 0o600),
                                               (os.POSIX_SPAWN_DUP2, 1, 2),
                                               (os.POSIX_SPAWN_DUP2, to_r, 3), (os.POSIX_SPAWN_DUP2, from_w, 4)])
        except BaseException:
            os.close(from_r)
            os.close(to_w)
            raise
        finally:
            os.close(to_r)
            os.close(from_w)  # only the browser holds the write end now: its death reads as EOF, not a hang
        cdp = _Pipe(from_r, to_w, deadline, log, url)
        try:
            target = cdp.call("Target.createTarget", url="about:blank")["targetId"]
            s = cdp.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Network", "Runtime", "Log"):
                cdp.call(f"{domain}.enable", s)
            cdp.call("Page.setLifecycleEventsEnabled", s, enabled=True)
            cdp.call("Emulation.setDeviceMetricsOverride", s, width=width, height=height, deviceScaleFactor=1, mobile=False)
            start, nav = len(cdp.events), cdp.call("Page.navigate", s, url=url)
            if "errorText" in nav:
                raise RuntimeError(f"Chromium could not open {url}: {nav['errorText']}")
            # The load event of this navigation (matched by loaderId, not about:blank's) waits for all images.
            while not any(e.get("method") == "Page.lifecycleEvent" and e["params"]["name"] == "load"
                          and e["params"]["loaderId"] == nav["loaderId"] for e in cdp.events[start:]):
                cdp.events.append(cdp.read())
            # Scripts may still fetch after load: wait for 0.3 s of quiet, 3 s at most.
            settle = time.monotonic() + 3
            while time.monotonic() < settle and (e := cdp.read(min(settle, time.monotonic() + 0.3))) is not None:
                cdp.events.append(e)
            res = cdp.call("Runtime.evaluate", s, expression=f"{_COLLECT_JS}({width}, {height})", returnByValue=True)
            if "exceptionDetails" in res:
                raise RuntimeError(f"page inspection script failed: {res['exceptionDetails']}")
            facts = res["result"]["value"]
        finally:
            cdp.close()
            try:  # whatever survived the polite close; before waitpid, so the group id cannot be reused
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            os.close(from_r)
            os.close(to_w)
    urls = [e["params"]["request"]["url"] if e["method"] == "Network.requestWillBeSent" else e["params"]["url"]
            for e in cdp.events if e.get("method") in ("Network.requestWillBeSent", "Network.webSocketCreated")]
    facts["requests"] = list(dict.fromkeys(u for u in urls if not u.startswith(LOCAL_SCHEMES)))
    facts["broken_images"] = [i for i in facts["images"] if not i["complete"] or i["natural_width"] == 0]
    facts["console_errors"] = [t for e in cdp.events if (t := _console_error(e))]
    return facts
