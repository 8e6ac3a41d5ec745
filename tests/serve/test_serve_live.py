"""``cellmorphnet serve`` as users start it: the installed command in its own process, under load, and in a
real browser (Chromium driven by Playwright).

Playwright cannot download its own browser here; Debian's ``chromium`` is used through
``executable_path``. Without a Chromium the browser test is skipped with the reason, except under CI
(``CI`` set), where it must run: ``.ci/run`` installs the browser.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import BCCD_ZIP, PBC_TEST_IMAGES

from cellmorphnet.runs import folders as runs

pytestmark = pytest.mark.slow  # live servers and a real browser

JPEGS = sorted(PBC_TEST_IMAGES.rglob("*.jpg"))
CHROMIUM = os.environ.get("CELLMORPHNET_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium on a machine without a network (and as root in CI): no sandbox, no background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def _command() -> list[str]:
    exe = Path(sys.executable).parent / "cellmorphnet"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cellmorphnet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, folder: Path, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"serve-{self.port}.log"
        env = {**os.environ, "CELLMORPHNET_HOME": str(folder / "home"), "NO_COLOR": "1"}
        env.pop("CELLMORPHNET_TOKEN", None)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([*_command(), "serve", "--port", str(self.port), "--device", "cpu", *args],
                                         stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip

    def wait_ready(self, timeout: float = 120) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"serve was not ready after {timeout} s:\n{self.log.read_text()}")

    def rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve")).wait_ready()
    yield s
    s.stop()


def test_binding_to_every_address_without_a_token_warns(tmp_path):
    s = Server(tmp_path, "--host", "0.0.0.0")
    try:
        s.url = f"http://127.0.0.1:{s.port}"
        s.wait_ready()
        assert "without a token" in s.log.read_text()
        assert httpx.get(f"{s.url}/healthz", headers={"Host": "lab-pc.example"}).status_code == 200  # any name
    finally:
        s.stop()


def test_a_local_server_answers_only_its_own_names_and_origin(server):
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/healthz", headers={"Host": "rebound.example"}).status_code == 400
    one = {"files": ("a.jpg", JPEGS[0].read_bytes(), "image/jpeg")}
    assert httpx.post(f"{server.url}/v1/predict", files=one, headers={"Origin": "http://evil.example"},
                      timeout=60).status_code == 403  # fmt: skip


def test_sixteen_clients_for_twenty_seconds(server):
    """16 concurrent clients sending one image each for 20 s: no errors, and memory does not keep growing."""
    payloads = [(p.name, p.read_bytes()) for p in JPEGS[::8]]
    errors: list[str] = []
    counts = [0] * 16
    rss: list[tuple[float, float]] = []
    start = time.monotonic()
    stop = start + 20

    def client(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            j = i
            while time.monotonic() < stop:
                name, data = payloads[j % len(payloads)]
                j += 16
                try:
                    r = c.post("/v1/predict", files={"files": (name, data, "image/jpeg")})
                    if r.status_code != 200 or r.json()["results"][0]["status"] != "ok":
                        errors.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    errors.append(repr(e))
                counts[i] += 1

    def sample() -> None:
        while time.monotonic() < stop:
            mb = server.rss_mb()
            if mb is not None:
                rss.append((time.monotonic() - start, mb))
            time.sleep(0.5)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)] + [threading.Thread(target=sample)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert all(n >= 2 for n in counts), counts
    if rss:  # Linux: the process's resident memory, first half against second half of the run
        first = max(mb for t, mb in rss if t < 10)
        second = max(mb for t, mb in rss if t >= 10)
        assert second <= first * 1.15 + 64, rss


# --- the web page in Chromium ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not CHROMIUM:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test, and no Chromium was found (.ci/run installs Debian's chromium)")
        pytest.skip("no Chromium found: install Debian's chromium, or point CELLMORPHNET_CHROMIUM at a Chromium binary")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


def test_the_web_page_in_a_real_browser(server, page, tmp_path):
    """Upload real JPEGs, a real smear field and a broken file, compare with infer, open a Grad-CAM and a cell of the
    field, download the CSV."""
    import zipfile

    from playwright.sync_api import expect

    folder = tmp_path / "upload"
    folder.mkdir()
    picked = JPEGS[::20]  # 12 images, every class
    for p in picked:
        shutil.copy(p, folder / p.name)
    with zipfile.ZipFile(BCCD_ZIP) as z:  # BCCD fields: two white cells (at the field's own scale), and one
        for n in ("00010", "00000"):
            name = next(m for m in z.namelist() if m.endswith(f"JPEGImages/BloodImage_{n}.jpg"))
            (folder / f"field-{n}.jpg").write_bytes(z.read(name))
    shutil.copy(picked[0], folder / "=HYPERLINK(1).jpg")  # a name a spreadsheet would run as a formula
    picked = [*picked, folder / "=HYPERLINK(1).jpg"]
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    files = sorted(folder.iterdir())

    # What infer says about the same files (each on its own), flagged below the page's default 0.8.
    want_csv = tmp_path / "infer.csv"
    env = {**os.environ, "CELLMORPHNET_HOME": str(tmp_path / "home")}
    r = subprocess.run([*_command(), "infer", runs.PACKAGED, str(folder), "--out", str(want_csv), "--device", "cpu",
                        "--min-confidence", "0.8"], env=env, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 3, r.stderr  # 3: some files skipped (the broken one)
    with want_csv.open(newline="") as f:
        want_rows = list(csv.reader(f))
    col = {c: i for i, c in enumerate(want_rows[0])}
    want = {(Path(row[0]).name, row[col["cell"]]): row for row in want_rows[1:]}
    field_rows = [row for row in want_rows[1:] if row[col["kind"]] == "field"]
    assert len(field_rows) == 3 and all(row[col["status"]] == "ok" for row in field_rows), field_rows
    assert {row[col["verdict"]] for row in want_rows[1:] if row[col["status"]] == "ok"} <= {"classified", "review"}

    page.goto(server.url)
    expect(page.locator("#model-name")).to_contain_text(runs.PACKAGED, timeout=30_000)
    expect(page.locator("#card")).to_contain_text("Test metrics")
    page.set_input_files("#pick-files", [str(f) for f in files])
    expect(page.locator("#progress")).to_have_text(f"{len(files)} of {len(files)} images classified", timeout=120_000)

    cards = page.locator("article.result")
    assert cards.count() == len(files)
    for i in range(cards.count()):
        card = cards.nth(i)
        name = card.get_attribute("data-name")
        shown = card.locator(".cls").inner_text()
        if name == "broken.jpg":
            assert shown == "could not be read" and "error" in card.get_attribute("class")
        elif name == "field-00010.jpg":
            assert shown == "field: 2 white cells"
            expect(card.locator("svg rect.box")).to_have_count(2)
            assert card.locator("ol li").count() == 2
            expect(card.locator("svg text.box-number")).to_have_count(2)  # each box numbered as the list is
            assert card.locator("svg text.box-number").all_text_contents() == ["1", "2"]
            assert card.locator(".legend .key").count() >= 1  # the box colours' legend
        elif name == "field-00000.jpg":
            assert shown == "field: 1 white cell"
        else:
            row = want[(name, "")]
            assert shown == row[col["predicted"]], name
            assert card.locator("ol li").count() == 3
            assert ("low" in card.get_attribute("class")) == (row[col["low_confidence"]] == "yes"), name
            assert card.get_attribute("data-verdict") == row[col["verdict"]], name  # the verdict, as infer gives it
            assert ("review:" in card.locator(".conf").inner_text()) == (row[col["verdict"]] == "review"), name
    bars = page.locator("#chart .bar .n")
    assert sum(int(bars.nth(i).inner_text()) for i in range(bars.count())) == len(picked) + 3
    white = page.locator("#differential tbody tr[data-class] td:nth-child(2)")
    counted = [r for r in want_rows[1:] if r[col["status"]] == "ok" and r[col["edge"]] != "yes"
               and r[col["low_confidence"]] == "no" and r[col["verdict"]] == "classified"]  # fmt: skip
    wbc = ("basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil")
    assert sum(int(white.nth(i).inner_text()) for i in range(white.count())) == sum(
        r[col["predicted"]] in wbc for r in counted)

    page.locator("article.result.field svg rect.box").first.click()  # a cell of the field: its top 3 and Grad-CAM
    expect(page.locator("#cam-image")).to_be_visible(timeout=60_000)
    expect(page.locator("#cam-body ol.top li")).to_have_count(3)
    page.locator("dialog .close").click()

    page.locator("article.result:not(.error):not(.field)").first.click()
    expect(page.locator("#cam-image")).to_be_visible(timeout=60_000)
    page.wait_for_function("document.getElementById('cam-image').naturalWidth === 516")
    page.locator("dialog .close").click()
    expect(page.locator("#cam-dialog")).not_to_be_visible()

    with page.expect_download() as download:
        page.click("#download")
    got_path = tmp_path / "page.csv"
    download.value.save_as(got_path)
    with got_path.open(newline="") as f:
        got_rows = list(csv.reader(f))
    assert got_rows[0] == want_rows[0]  # the same columns as infer --out x.csv
    assert len(got_rows) == len(want_rows)
    assert any(row[0] == "'=HYPERLINK(1).jpg" for row in got_rows)  # written as text, as infer writes it
    for row in got_rows[1:]:
        expected = want[(Path(row[0].removeprefix("'")).name, row[col["cell"]])]
        for column, a, b in zip(want_rows[0][1:], row[1:], expected[1:], strict=True):
            numeric = column in ("confidence", "typicality") or column.endswith("_probability")
            if numeric and a and b:
                assert abs(float(a) - float(b)) < 1e-4, (row[0], column, a, b)
            else:
                assert a == b, (row[0], column, a, b)


def test_memory_stays_bounded_under_large_canvases_and_health_answers(tmp_path):
    """Blank 7000x7000 PNGs (about 60 KB each, 49 megapixels decoded), four to a request (within the request's
    pixel budget), three such requests at once: the server's resident memory peaks well under 2.5 GB, /healthz
    answers within a second throughout, and a fifth canvas in one request is refused from the headers (413)."""
    import io
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (7000, 7000), "white").save(buf, format="PNG")
    canvas = buf.getvalue()
    s = Server(tmp_path).wait_ready()
    try:
        slowest, stop = [0.0], threading.Event()

        def watch() -> None:
            while not stop.is_set():
                t = time.monotonic()
                assert httpx.get(f"{s.url}/healthz", timeout=5).status_code == 200
                slowest[0] = max(slowest[0], time.monotonic() - t)
                time.sleep(0.1)

        watcher = threading.Thread(target=watch)
        watcher.start()

        def post(n: int) -> int:
            files = [("files", (f"{i}.png", canvas, "image/png")) for i in range(n)]
            return httpx.post(f"{s.url}/v1/predict", files=files, timeout=300).status_code

        with ThreadPoolExecutor(3) as pool:
            assert list(pool.map(post, [4, 4, 4])) == [200, 200, 200]
        assert post(5) == 413
        stop.set()
        watcher.join()
        peak = next(int(line.split()[1]) / 1024 for line in Path(f"/proc/{s.proc.pid}/status").read_text().splitlines()
                    if line.startswith("VmHWM:"))  # fmt: skip
        assert peak < 2500, f"peak resident memory {peak:.0f} MB"
        assert slowest[0] < 1.0, f"/healthz took {slowest[0]:.2f} s"
    finally:
        s.stop()


def test_a_client_that_disconnects_mid_upload_is_one_log_line(tmp_path):
    s = Server(tmp_path).wait_ready()
    try:
        for _ in range(5):  # each sends the headers and part of a 1 MB body, then hangs up
            with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
                c.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                          b"boundary=b\r\nContent-Length: 1000000\r\n\r\n--b\r\n" + b"x" * 50_000)  # fmt: skip
                time.sleep(0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and s.log.read_text().count("disconnected during its upload") < 5:
            time.sleep(0.2)
        assert httpx.get(f"{s.url}/healthz", timeout=5).status_code == 200
        log = s.log.read_text()
        assert log.count("INFO: ") >= 5 and log.count("disconnected during its upload") == 5, log
        assert "Traceback" not in log, log
    finally:
        s.stop()


def _trickle(conns: list[socket.socket], seconds: float) -> dict[int, tuple[float, bytes]]:
    """Send one byte a connection every 0.4 s until the server answers or closes each; ``{index: (when, answer)}``."""
    start, done = time.monotonic(), {}
    while time.monotonic() - start < seconds and len(done) < len(conns):
        for i, c in enumerate(conns):
            if i in done:
                continue
            c.setblocking(False)
            try:
                got = c.recv(65536)
            except BlockingIOError:
                c.setblocking(True)
                try:
                    c.sendall(b"x")
                except OSError:
                    done[i] = (time.monotonic() - start, b"")
                continue
            except ConnectionResetError:
                got = b""
            done[i] = (time.monotonic() - start, got)
        time.sleep(0.4)
    return done


def _slow_uploads(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that send a POST's headers and the first bytes of a 1 MB body, one after the other."""
    conns = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        conns.append(c)
        c.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                  b"boundary=b\r\nContent-Length: 1000000\r\n\r\n--b")  # fmt: skip
        time.sleep(0.05)  # each request in before the next connection opens
    return conns


def test_slow_clients_are_cut_off_and_cannot_keep_others_out(tmp_path):
    """Slowloris both ways, with --max-connections 20. 30 connections sending their headers a byte at a time:
    the oldest are closed to make room for new ones (a real request is answered meanwhile) and every one is
    closed after --header-timeout. 20 connections sending a body a byte at a time: a real request still gets
    in (the slowest upload makes room) and every slow upload is answered 408 or closed after --body-timeout."""
    s = Server(tmp_path, "--max-connections", "20", "--header-timeout", "2", "--body-timeout", "3").wait_ready()
    opened = []
    try:
        heads = [socket.create_connection(("127.0.0.1", s.port), timeout=5) for _ in range(30)]
        opened += heads
        for c in heads:
            c.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        time.sleep(0.3)
        assert httpx.get(f"{s.url}/healthz", timeout=5).status_code == 200  # room was made for it
        closed = _trickle(heads, 8)
        assert len(closed) == 30 and max(t for t, _ in closed.values()) < 4.0, closed

        bodies = _slow_uploads(s.port, 20)
        opened += bodies
        time.sleep(1.2)
        assert httpx.get(f"{s.url}/healthz", timeout=5).status_code == 200  # a slow upload made room
        answers = _trickle(bodies, 8)
        assert len(answers) == 20 and max(t for t, _ in answers.values()) < 4.0, answers
        assert sum(a.startswith(b"HTTP/1.1 408") for _, a in answers.values()) >= 15, answers
        assert httpx.get(f"{s.url}/healthz", timeout=5).status_code == 200
        log = s.log.read_text()
        assert log.count("closed to make room") >= 11 and log.count("sent no complete request within 2 s") >= 5, log
        assert log.count("uploaded too slowly") >= 15 and "Traceback" not in log, log
    finally:
        for c in opened:
            c.close()
        s.stop()


def test_past_the_connection_cap_of_busy_uploads_a_request_is_answered_503(tmp_path):
    """--max-connections 3 uploads that keep above --min-upload-kbps are all served; a fourth request is 503."""
    s = Server(tmp_path, "--max-connections", "3", "--min-upload-kbps", "0.001").wait_ready()
    bodies = _slow_uploads(s.port, 3)
    try:
        time.sleep(1.2)
        for c in bodies:
            c.sendall(b"xx")
        for _ in range(5):
            assert httpx.get(f"{s.url}/healthz", timeout=5).status_code == 503
        for c in bodies:
            c.close()
        time.sleep(0.3)
        assert httpx.get(f"{s.url}/healthz", timeout=5).status_code == 200
        log = s.log.read_text()  # one line for the burst, not one per 503
        assert log.count("Exceeded concurrency limit") == 1 and "answered 503 (busy)" in log, log
    finally:
        s.stop()


def test_reviewing_cells_by_keyboard_in_a_real_browser(server, page, tmp_path):
    """Open a case, add 12 real JPEGs, review each with one key (Enter confirms, a digit or a class's first letters
    reassigns, u undoes), reload (the reviews are still there), export them, and adapt a model to the export."""
    from playwright.sync_api import expect

    picked = JPEGS[::20]
    page.goto(f"{server.url}/review")
    expect(page.locator("#model-name")).to_contain_text(runs.PACKAGED, timeout=30_000)
    page.fill("#case", "slide A")
    page.fill("#reviewer", "Ana")
    page.locator("#reviewer").dispatch_event("change")
    page.click("#case-form button[type=submit]")
    page.set_input_files("#pick-files", [str(p) for p in picked])
    expect(page.locator("#progress")).to_have_text("12 of 12 images added", timeout=120_000)
    tiles = page.locator(".cell-tile")
    expect(tiles).to_have_count(12)
    tiles.first.focus()
    decisions = ["Enter", "n", "Enter", "2", "l", "Enter", "Enter", "m", "Enter", "eo", "Enter", "Enter"]  # eo: eosino…
    for done, keys in enumerate(decisions, 1):
        for key in keys if keys != "Enter" else [keys]:
            page.keyboard.press(key)
        expect(page.locator(".cell-tile.done")).to_have_count(done, timeout=30_000)  # saved; focus moved on
    tiles.nth(11).focus()
    page.keyboard.press("u")  # undo the last review...
    expect(page.locator(".cell-tile.done")).to_have_count(11, timeout=10_000)
    page.keyboard.press("1")  # ...and give it another class: basophil
    expect(page.locator(".cell-tile.done")).to_have_count(12, timeout=10_000)
    reassigned = page.locator(".cell-tile.changed").count()
    assert reassigned >= 3  # "n", "2", "l", "m", "eo", "1" reassign wherever the model said otherwise

    page.reload()  # the reviews live on the server
    expect(page.locator(".cell-tile")).to_have_count(12, timeout=30_000)
    expect(page.locator(".cell-tile.done")).to_have_count(12)
    now = page.locator("#counts tbody td:nth-child(3)")
    assert sum(int(now.nth(i).inner_text()) for i in range(now.count())) == 12
    reviewed = page.locator("#counts tbody td:nth-child(4)")  # per class, toward the 20 an adaptation wants
    assert sum(int(reviewed.nth(i).inner_text()) for i in range(reviewed.count())) == 12
    assert int(page.locator("#counts tbody tr[data-class=basophil] td:nth-child(4)").inner_text()) >= 1
    expect(page.locator("#reviewed")).to_have_text("12 of 12 cells reviewed")
    expect(page.locator("#stats-case")).to_contain_text("This case: 12 reviewed", timeout=10_000)  # the lab's accuracy
    page.locator(".cell-tile").first.focus()
    page.keyboard.press(" ")  # enlarged: the cell at full resolution, Grad-CAM on request
    expect(page.locator("#zoom")).to_be_visible()
    page.click("#zoom-cam-button")
    expect(page.locator("#zoom-cam")).to_be_visible(timeout=30_000)
    page.keyboard.press("Escape")
    expect(page.locator("#zoom")).not_to_be_visible()
    assert page.locator("#case").bounding_box()["width"] > 150  # a case name can be read in it
    with page.expect_popup() as popup:  # the case report, in a new tab
        page.click("#report")
    expect(popup.value.locator("h1")).to_have_text("Case slide A", timeout=10_000)
    assert httpx.get(f"{server.url}/favicon.ico").headers["content-type"].startswith("image/svg")

    with page.expect_download() as download:
        page.click("#export")
    zipped = tmp_path / "reviewed.zip"
    download.value.save_as(zipped)
    import zipfile

    with zipfile.ZipFile(zipped) as z:
        z.extractall(tmp_path / "reviewed")
    rows = list(csv.DictReader((tmp_path / "reviewed" / "cells.csv").open()))
    assert len(rows) == 12 and {r["reviewer"] for r in rows} == {"Ana"}
    assert all((tmp_path / "reviewed" / r["file"]).is_file() for r in rows)
    env = {**os.environ, "CELLMORPHNET_HOME": str(tmp_path / "home")}
    r = subprocess.run([*_command(), "train", "--init", runs.PACKAGED, "--datasets", f"folder:{tmp_path / 'reviewed'}",
                        "--steps", "3", "--device", "cpu"], env=env, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Adapted bloodmnist to 12 cells" in r.stderr and "Few reviewed cells of" in " ".join(r.stderr.split())

    # twenty neutrophils reviewed (through the API): that class's reviewed count turns green, the others stay plain
    twenty = sorted((PBC_TEST_IMAGES / "neutrophil").glob("*.jpg"))[:20]
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in twenty]
    cells = httpx.post(f"{server.url}/v1/cases/slide%20B/cells", files=files, timeout=120).json()["cells"]
    for cell in cells:
        assert httpx.post(f"{server.url}/v1/cells/{cell['id']}/review", json={"class": "neutrophil"}).status_code == 200
    page.reload()
    page.fill("#case", "slide B")
    page.click("#case-form button[type=submit]")
    expect(page.locator("#reviewed")).to_have_text("20 of 20 cells reviewed", timeout=30_000)
    expect(page.locator("#counts tbody td.enough")).to_have_count(1)
    expect(page.locator("#counts tbody tr[data-class=neutrophil] td.enough")).to_have_text("20")


def test_accounts_adapt_promote_and_rollback_in_a_real_browser(page, tmp_path):
    """A home with accounts: the page signs in as the admin (the reviewer box is the account), adapts the served model
    to a case's reviewed cells as a background job, shows both models side by side, promotes the new one and rolls
    back; a viewer's review is refused, and every switch is recorded under the admin."""
    from playwright.sync_api import expect

    env = {**os.environ, "CELLMORPHNET_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    tokens = {}
    for name, role in (("Adam", "admin"), ("Ana", "reviewer"), ("Vi", "viewer")):
        r = subprocess.run([*_command(), "users", "add", name, "--role", role], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        tokens[role] = r.stdout.strip()
    server = Server(tmp_path, "--adapt-steps", "6").wait_ready()
    try:
        assert "3 accounts" in server.log.read_text()
        assert httpx.get(f"{server.url}/v1/cases").status_code == 401
        ana = {"Authorization": f"Bearer {tokens['reviewer']}"}
        picked = [p for t in ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
                  for p in sorted((PBC_TEST_IMAGES / t).glob("*.jpg"))[:5]]  # fmt: skip
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in picked]
        cells = httpx.post(f"{server.url}/v1/cases/slide%20C/cells", files=files, headers=ana, timeout=120).json()
        for cell, p in zip(cells["cells"], picked, strict=True):
            r = httpx.post(f"{server.url}/v1/cells/{cell['id']}/review", json={"class": p.parent.name}, headers=ana)
            assert r.status_code == 200 and r.json()["reviewer"] == "Ana"
        viewer = {"Authorization": f"Bearer {tokens['viewer']}"}
        cid = cells["cells"][0]["id"]
        refused = httpx.post(f"{server.url}/v1/cells/{cid}/review", json={"class": "ig"}, headers=viewer)
        assert refused.status_code == 403

        import zipfile

        with zipfile.ZipFile(BCCD_ZIP) as z:  # a smear field: its cells are shown in it when enlarged
            field = z.read(next(m for m in z.namelist() if m.endswith("JPEGImages/BloodImage_00176.jpg")))
        httpx.post(f"{server.url}/v1/cases/field%20D/cells", files=[("files", ("00176.jpg", field, "image/jpeg"))],
                   headers=ana, timeout=120).raise_for_status()  # fmt: skip

        page.goto(f"{server.url}/review")
        page.fill("#token", tokens["admin"])
        page.click("#auth button[type=submit]")
        expect(page.locator("#signed-in")).to_have_text("Signed in as Adam (admin).", timeout=30_000)
        expect(page.locator("#reviewer")).to_be_disabled()
        page.fill("#case", "field D")
        page.click("#case-form button[type=submit]")
        expect(page.locator(".cell-tile").first).to_be_visible(timeout=30_000)
        assert page.locator(".cell-tile img").first.bounding_box()["width"] >= 150  # large enough to judge granules
        page.locator(".cell-tile").first.focus()
        page.keyboard.press(" ")
        expect(page.locator("#zoom-field")).to_be_visible(timeout=30_000)  # the cell's box in its field
        page.keyboard.press("Escape")
        page.set_viewport_size({"width": 800, "height": 900})  # from 800 px up the counts stay beside the tiles
        tiles_box, aside_box = page.locator("#groups").bounding_box(), page.locator("aside").bounding_box()
        assert aside_box["x"] >= tiles_box["x"] + tiles_box["width"] - 1 and aside_box["y"] < tiles_box["y"] + 100
        page.set_viewport_size({"width": 1280, "height": 900})
        page.locator("#adapt-cases input[value='slide C']").check()
        page.click("#adapt")
        expect(page.locator("#adapt-status")).to_contain_text("is ready", timeout=300_000)
        expect(page.locator("#adapt-scores")).to_be_visible()
        assert page.locator("#adapt-scores tbody tr").count() == 6  # four types, all, PBC reference
        page.click("#promote")
        expect(page.locator("#model-name")).to_contain_text("desk-", timeout=60_000)
        expect(page.locator("#served")).to_contain_text("by Adam")
        page.click("#rollback")
        expect(page.locator("#model-name")).to_contain_text(runs.PACKAGED, timeout=60_000)
        r = subprocess.run([*_command(), "lab", "served", "--json"], env=env, capture_output=True, text=True)
        import json

        switches = json.loads(r.stdout)["switches"]
        assert [(s["action"], s["by"]) for s in switches] == [("rollback", "Adam"), ("promote", "Adam")]
    finally:
        server.stop()
