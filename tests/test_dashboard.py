#!/usr/bin/env python3
"""
test_dashboard.py - the dashboard (web/, served under /ui/) in a real
browser: Debian's chromium, headless, driven by chromedriver through
python3-selenium (tools/deps --test installs them; a missing one fails the
test, saying so).

Starts `$HOGREC_BIN serve --db "" --admin-token ...` on a free 127.0.0.1
port (tests/contracts/contract.py's Server: stopped by its pid), posts
events, and checks that
  - the overview's charts fill with points;
  - applying a schedule through the form changes GET /v1/admin/schedule and
    draws its marker (labelled with the version) on the charts;
  - an invalid value shows the API's error beside its field and changes
    nothing;
  - a rollback from the history table restores the earlier schedule;
  - the explorer's top-K for a user equals GET /v1/recommend;
  - the cluster page says standalone;
  - the browser console logged no error (a CSP violation is one).
Saves one screenshot per page into OUT_DIR (dashboard-<page>.png). Every
wait is bounded.

Usage: test_dashboard.py OUT_DIR
"""
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "contracts"))
import contract  # noqa: E402
from contract import Failure  # noqa: E402

TOKEN = "dash-token"
WAIT = 60  # seconds any one condition may take, at most


def http(port, method, path, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def click_fresh(driver, by, what):
    """Finds and clicks an element; False (try again) when there is none
    yet or the page replaced it between the find and the click."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    try:
        driver.find_element(by, what).click()
        return True
    except (NoSuchElementException, StaleElementReferenceException):
        return False


def free_port():
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def check_cluster_page(driver, wait, out_dir, By):
    """Two cluster nodes on a redis-server of the test's own: the cluster
    page of one lists both members with their roles, and refreshes."""
    if not shutil.which("redis-server"):
        raise Failure("redis-server is missing: run tools/deps --test")
    rdir = tempfile.mkdtemp(prefix="hogrec-dash-redis-")
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "yes", "--dir", rdir,
                              "--daemonize", "no"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    nodes = []
    try:
        for _ in range(WAIT * 10):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as so:
                    so.sendall(b"PING\r\n")
                    if so.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise Failure("redis-server did not answer PING")
        url = f"redis://127.0.0.1:{port}"
        for node in ("a", "b"):
            nodes.append(contract.Server(["--db", "", "--admin-token", TOKEN, "--redis", url,
                                          "--cluster", "dash", "--node-id", node],
                                         f"node {node}"))
        post_events(nodes[1].port, random.Random(11), 200)
        driver.get(f"http://127.0.0.1:{nodes[0].port}/ui/#cluster")

        def roles(d):  # read in one script: the page redraws the table every second
            return sorted(d.execute_script(
                "return Array.from(document.querySelectorAll('#members tr[data-node]'))"
                ".map(r => r.cells[1].textContent);") or [])
        wait.until(lambda d: roles(d) == ["follower", "leader"])
        driver.save_screenshot(os.path.join(out_dir, "dashboard-cluster.png"))
    finally:
        for n in nodes:
            n.stop()
        redis.terminate()
        redis.wait(timeout=WAIT)
        shutil.rmtree(rdir, ignore_errors=True)


def post_events(port, rng, n):
    evs = [{"user": f"u{rng.randrange(20)}", "item": f"i{rng.randrange(30)}",
            "label": rng.randrange(2)} for _ in range(n)]
    for i in range(0, n, 100):
        st, _ = http(port, "POST", "/v1/events", evs[i:i + 100])
        if st != 202:
            raise Failure(f"POST /v1/events: {st}")


def main():
    if len(sys.argv) != 2:
        raise Failure(__doc__.strip().splitlines()[-1])
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError as e:
        raise Failure(f"python3-selenium is missing ({e}): run tools/deps --test") from e
    for tool in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not os.path.exists(tool):
            raise Failure(f"{tool} is missing: run tools/deps --test (chromium chromium-driver)")

    rng = random.Random(10)
    srv = contract.Server(["--db", "", "--admin-token", TOKEN], "dashboard")
    driver = None
    try:
        port = srv.port
        post_events(port, rng, 600)
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        driver.set_page_load_timeout(WAIT)
        wait = WebDriverWait(driver, WAIT, poll_frequency=0.2)
        base = f"http://127.0.0.1:{port}"

        def points(chart):
            # read in one script: the page redraws the charts every second
            return driver.execute_script(
                "return Array.from(document.querySelectorAll('#chart-' + arguments[0] + "
                "' polyline.series')).map(p => Number(p.getAttribute('data-n')));", chart)

        # ---- overview ----
        driver.get(base + "/")  # redirects to /ui/
        if not driver.current_url.endswith("/ui/"):
            raise Failure(f"/ did not redirect to /ui/: {driver.current_url}")
        post_events(port, rng, 300)
        wait.until(lambda d: max(points("loss") or [0]) >= 2 and max(points("events") or [0]) >= 2)
        post_events(port, rng, 300)
        wait.until(lambda d: max(points("events") or [0]) >= 6)
        driver.save_screenshot(os.path.join(out_dir, "dashboard-overview.png"))

        # ---- schedule: token, apply ----
        driver.get(base + "/ui/#schedule")
        wait.until(lambda d: d.find_element(By.ID, "token-box").is_displayed())
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "token-save").click()
        wait.until(lambda d: d.find_element(By.ID, "f-eta0").get_attribute("value") != "")
        st, before = http(port, "GET", "/v1/admin/schedule", token=TOKEN)
        v0, eta_before = before["version"], before["eta0"]

        def set_field(name, value):
            f = driver.find_element(By.ID, "f-" + name)
            f.clear()
            f.send_keys(value)

        set_field("eta0", "0.05")
        driver.find_element(By.ID, "sched-apply").click()
        wait.until(lambda d: http(port, "GET", "/v1/admin/schedule", token=TOKEN)[1]["version"] == v0 + 1)
        st, now = http(port, "GET", "/v1/admin/schedule", token=TOKEN)
        if abs(now["eta0"] - 0.05) > 1e-12:
            raise Failure(f"applied eta0 0.05, the server has {now['eta0']}")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#history tr[data-version='{v0 + 1}']"))

        # ---- an invalid value: the error beside its field, nothing changes ----
        set_field("eta0", "-1")
        driver.find_element(By.ID, "sched-apply").click()
        wait.until(lambda d: d.find_element(By.ID, "err-eta0").text.strip() != "")
        err = driver.find_element(By.ID, "err-eta0").text
        if "eta0" not in err:
            raise Failure(f"the error beside eta0 does not name it: {err!r}")
        st, after = http(port, "GET", "/v1/admin/schedule", token=TOKEN)
        if after["version"] != v0 + 1 or after["eta0"] != now["eta0"]:
            raise Failure(f"an invalid eta0 changed the schedule: {after}")
        driver.save_screenshot(os.path.join(out_dir, "dashboard-schedule.png"))

        # ---- the marker of the change on the overview ----
        driver.get(base + "/ui/#overview")
        wait.until(lambda d: len(d.find_elements(
            By.CSS_SELECTOR, f"#chart-loss line.marker[data-version='{v0 + 1}']")) == 1)
        labels = driver.execute_script(
            "return Array.from(document.querySelectorAll('#chart-loss text.marker-label'))"
            ".map(t => t.textContent);")
        if f"v{v0 + 1}" not in labels:
            raise Failure(f"no label v{v0 + 1} on the loss chart: {labels}")
        for c in ("events", "lr", "model"):
            if not driver.execute_script(
                    "return document.querySelectorAll('#chart-' + arguments[0] + "
                    "' line.marker[data-version=\"' + arguments[1] + '\"]').length;", c, v0 + 1):
                raise Failure(f"chart {c} has no marker for version {v0 + 1}")

        # ---- rollback ----
        driver.get(base + "/ui/#schedule")
        # the history table is redrawn while the page refreshes: find and
        # click in one step, again if the row was replaced in between
        wait.until(lambda d: click_fresh(d, By.CSS_SELECTOR, f"button.rollback[data-version='{v0}']"))
        wait.until(lambda d: http(port, "GET", "/v1/admin/schedule", token=TOKEN)[1]["version"] == v0 + 2)
        st, rolled = http(port, "GET", "/v1/admin/schedule", token=TOKEN)
        b = dict(before)
        r = dict(rolled)
        b.pop("version")
        r.pop("version")
        if b != r:
            raise Failure(f"rollback to v{v0}: {r}, not {b}")

        # ---- explorer ----
        driver.get(base + "/ui/#explorer")
        user = "u3"
        driver.find_element(By.ID, "user-id").send_keys(user)
        driver.find_element(By.ID, "user-go").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#topk tbody tr")) > 0)
        st, rec = http(port, "GET", f"/v1/recommend?user={user}&k=10")
        shown = [tr.get_attribute("data-item") for tr in driver.find_elements(By.CSS_SELECTOR, "#topk tbody tr")]
        want = [it["item"] for it in rec["items"]]
        if shown != want:
            raise Failure(f"explorer top-K {shown}, /v1/recommend {want}")
        wait.until(lambda d: d.find_element(By.ID, "seen").text.strip() not in ("", "-"))
        driver.find_element(By.ID, "item-id").send_keys("i1")
        driver.find_element(By.ID, "item-go").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#similar tbody tr")) > 0)
        driver.find_element(By.ID, "pair-user").send_keys(user)
        driver.find_element(By.ID, "pair-item").send_keys("i1")
        driver.find_element(By.ID, "pair-go").click()
        wait.until(lambda d: d.find_element(By.ID, "pair-score").text.startswith("score "))
        driver.save_screenshot(os.path.join(out_dir, "dashboard-explorer.png"))

        # ---- cluster ----
        driver.get(base + "/ui/#cluster")
        wait.until(lambda d: d.find_elements(By.ID, "standalone"))
        check_cluster_page(driver, wait, out_dir, By)

        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        # chromium logs every 4xx as a failed resource load: the 401 of the
        # first read without the token and the 400 of the invalid value are
        # expected; anything else is an error of the page
        errors = [e for e in errors if not ("/v1/admin/schedule - Failed to load resource" in
                                            e.get("message", "") and
                                            ("status of 400" in e["message"] or
                                             "status of 401" in e["message"]))]
        if errors:
            raise Failure("browser console errors:\n" + "\n".join(e["message"] for e in errors))
        print(f"dashboard: charts, schedule apply/invalid/rollback (v{v0}..v{v0 + 2}), explorer, "
              f"cluster checked; screenshots in {out_dir}")
    finally:
        if driver is not None:
            driver.quit()
        code = srv.stop()
        if code != 0:
            print(f"server exited {code}:\n{srv.tail()}", file=sys.stderr)


if __name__ == "__main__":
    contract.run(main)
