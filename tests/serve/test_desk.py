"""Who did what, and which model is served: accounts (tokens shown once, stored hashed, roles enforced), the served
model's switches (promote, rollback, a tampered run refused) through the CLI and the API, and the adapt job."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import EXTERNAL, assert_one_line_error
from fastapi.testclient import TestClient
from PIL import Image

from cellmorphnet.errors import Conflict, InvalidData, NotFound
from cellmorphnet.runs import folders as runs
from cellmorphnet.serve.accounts import Accounts, accounts_path
from cellmorphnet.serve.app import create_app


def _png(colour=(200, 100, 150)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_a_token_is_shown_once_and_stored_only_as_its_hash(tmp_path):
    path = tmp_path / "accounts.sqlite"
    with Accounts(path) as accounts:
        assert not accounts.any()
        ana, token = accounts.add("Ana", "reviewer")
        assert ana.role == "reviewer" and accounts.any()
        assert accounts.authenticate(token).name == "Ana"
        assert accounts.authenticate(token).name == "Ana"  # again, from memory
        assert accounts.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
        assert accounts.authenticate("s3cret") is None and accounts.authenticate("") is None
        with pytest.raises(Conflict, match="already an account"):
            accounts.add("Ana", "viewer")
        with pytest.raises(InvalidData, match="Unknown role"):
            accounts.add("Ben", "boss")
        secret = token.rsplit("_", 1)[1]
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # the file and its journal
    assert token.encode() not in raw and secret.encode() not in raw
    with Accounts(path) as accounts:
        new = accounts.new_token("Ana")
        assert accounts.authenticate(token) is None and accounts.authenticate(new).name == "Ana"
        accounts.remove("Ana")
        assert accounts.authenticate(new) is None and not accounts.any()
        with pytest.raises(NotFound):
            accounts.remove("Ana")
        events = [r[0] for r in accounts._file.db.execute("SELECT action FROM events ORDER BY id")]
    assert events == ["added", "new token", "removed"]


def test_the_accounts_file_is_checked_on_open(tmp_path):
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(InvalidData, match="another program"):
        Accounts(other)
    newer = tmp_path / "newer.sqlite"
    Accounts(newer).close()
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(Exception, match="newer cellmorphnet"):
        Accounts(newer)


def test_users_command_prints_the_token_once_and_never_lists_it(cli, home):
    r = cli("users", "add", "Ana", "--role", "viewer")
    assert r.exit_code == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("cmn_") and "first account" in r.stderr
    listed = cli("users", "list", "--json")
    assert json.loads(listed.stdout) == [{"name": "Ana", "role": "viewer", "created": json.loads(listed.stdout)[0][
        "created"]}] and token not in listed.stdout  # fmt: skip
    assert token not in cli("users", "list").stdout
    again = cli("users", "token", "Ana", "--json")
    assert json.loads(again.stdout)["token"] != token
    assert_one_line_error(cli("users", "add", "Ben", "--role", "boss"), "Unknown role")
    assert_one_line_error(cli("users", "remove", "Cy"), "no account")
    assert cli("users", "remove", "Ana").exit_code == 0
    assert json.loads(cli("users", "list", "--json").stdout) == []


@pytest.fixture
def guarded(service, tmp_path):
    """An application whose home has a viewer, a reviewer and an admin, and a shared token."""
    from cellmorphnet.reviews.store import ReviewStore

    accounts = Accounts(tmp_path / "accounts.sqlite")
    tokens = {role: accounts.add(name, role)[1] for name, role in
              (("Vi", "viewer"), ("Ana", "reviewer"), ("Adam", "admin"))}  # fmt: skip
    store = ReviewStore(tmp_path / "reviews.sqlite", service.classes)
    cell = store.add_cell("slide 1", source="a.png", image_sha256="sha-a", cell_index=None, box=None, edge=False,
                          crop=_png(), crop_type="image/png", run="bloodmnist", checkpoint_sha256="abc",
                          predicted="neutrophil", confidence=0.9, probabilities={"neutrophil": 0.9})  # fmt: skip
    client = TestClient(create_app(service, token="shared-token", reviews=store, accounts=accounts))
    yield client, tokens, cell, store
    store.close()
    accounts.close()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_roles_decide_who_may_review_and_reviews_carry_the_account(guarded):
    client, tokens, cell, store = guarded
    assert client.get("/v1/cases").status_code == 401
    assert client.get("/v1/cases", headers=_auth("cmn_000000000000_" + "x" * 43)).status_code == 401
    viewer = _auth(tokens["viewer"])
    assert client.get("/v1/cases", headers=viewer).status_code == 200
    assert client.get("/v1/me", headers=viewer).json()["role"] == "viewer"
    refused = client.post(f"/v1/cells/{cell}/review", json={"class": "lymphocyte"}, headers=viewer)
    assert refused.status_code == 403 and "viewer" in refused.json()["detail"]
    assert store.cell(cell).reviewed is None
    ok = client.post(f"/v1/cells/{cell}/review", json={"class": "lymphocyte", "reviewer": "Someone else"},
                     headers=_auth(tokens["reviewer"]))  # fmt: skip
    assert ok.status_code == 200 and ok.json()["reviewer"] == "Ana"  # the account, not the name typed
    assert store.history(cell)[-1]["reviewer"] == "Ana"
    shared = client.post(f"/v1/cells/{cell}/review", json={"class": "neutrophil", "reviewer": "Lab PC"},
                         headers=_auth("shared-token"))  # fmt: skip
    assert shared.status_code == 200 and shared.json()["reviewer"] == "Lab PC"  # one-person use as before
    assert client.get("/v1/me", headers=_auth("shared-token")).json() == {
        "name": None, "role": "admin", "created": None, "rights": ["adapt", "classify", "promote", "read", "review"]}


@pytest.fixture
def desk_home(home, service):
    """A home with a second run (a copy of the shipped one) and a server around the shipped one."""
    from cellmorphnet.reviews.store import ReviewStore
    from cellmorphnet.serve.desk import Desk
    from cellmorphnet.serve.service import ModelService

    shipped = runs.packaged_runs()[runs.PACKAGED]
    copy = home / "runs" / "lab-copy"
    shutil.copytree(shipped, copy)
    accounts = Accounts(accounts_path(home))
    tokens = {role: accounts.add(role.title(), role)[1] for role in ("reviewer", "admin")}
    store = ReviewStore(home / "reviews.sqlite", service.classes)
    desk = Desk(home, store, lambda folder: ModelService(folder, device="cpu").warm_up(),
                served=("bloodmnist", shipped), device="cpu", watch=False)  # fmt: skip
    client = TestClient(create_app(service, reviews=store, accounts=accounts, desk=desk))
    yield client, tokens, copy, desk
    desk.close()
    if client.app.state.service is not service:
        client.app.state.service.close()
    store.close()
    accounts.close()


def test_promote_and_rollback_through_the_api_are_recorded_and_admin_only(desk_home, service):
    client, tokens, copy, desk = desk_home
    admin, reviewer = _auth(tokens["admin"]), _auth(tokens["reviewer"])
    assert client.post("/v1/served/promote", json={"run": "lab-copy"}, headers=reviewer).status_code == 403
    r = client.post("/v1/served/promote", json={"run": "lab-copy"}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["run"] == "lab-copy" and r.json()["previous"] == "bloodmnist" and r.json()["by"] == "Admin"
    assert client.app.state.service is not service and client.app.state.service.run_dir == copy
    card = client.get("/v1/model", headers=reviewer).json()
    assert card["run"] == "lab-copy" or "lab-copy" in json.dumps(card)
    back = client.post("/v1/served/rollback", headers=admin)
    assert back.status_code == 200 and back.json()["action"] == "rollback" and back.json()["run"] == "bloodmnist"
    history = client.get("/v1/served", headers=reviewer).json()
    assert history["run"] == "bloodmnist" and [s["action"] for s in history["switches"]] == ["rollback", "promote"]
    assert client.post("/v1/served/promote", json={"run": "no-such-run"}, headers=admin).status_code == 404
    assert client.post("/v1/served/promote", json={"run": "../etc"}, headers=admin).status_code == 422
    broken = copy.parent / "broken"
    shutil.copytree(copy, broken)
    (broken / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    r = client.post("/v1/served/promote", json={"run": "broken"}, headers=admin)
    assert r.status_code == 409 and "cannot be served" in r.json()["detail"]
    assert len(client.get("/v1/served", headers=admin).json()["switches"]) == 2  # nothing recorded for it


def test_lab_promote_on_the_command_line_and_a_tampered_run_refused(cli, home):
    copy = home / "runs" / "lab-copy"
    shutil.copytree(runs.packaged_runs()[runs.PACKAGED], copy)
    r = cli("lab", "promote", "lab-copy", "--note", "adapted to slide scanner B", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["previous"] == "bloodmnist"
    assert_one_line_error(cli("lab", "promote", "lab-copy"), "already the served model")
    served = json.loads(cli("lab", "served", "--json").stdout)
    assert served["run"] == "lab-copy" and served["switches"][0]["note"] == "adapted to slide scanner B"
    ckpt = copy / "checkpoints" / "best.pt"
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")  # the promoted checkpoint changed since
    assert_one_line_error(cli("lab", "served"), "not the one that was promoted")
    assert cli("lab", "rollback").exit_code == 0  # back to the shipped model, which is unchanged
    assert json.loads(cli("lab", "served", "--json").stdout)["run"] == "bloodmnist"
    assert_one_line_error(cli("lab", "rollback"), "not the one that was promoted")  # would serve the changed run


def test_an_adapt_job_is_refused_without_reviewed_cells_and_while_one_runs(desk_home):
    client, tokens, _copy, desk = desk_home
    reviewer = _auth(tokens["reviewer"])
    assert client.get("/v1/adapt", headers=reviewer).status_code == 404
    assert client.post("/v1/adapt", json={"cases": ["nope"]}, headers=reviewer).status_code == 422
    desk.store.add_cell("empty case", source="a.png", image_sha256="sha-a", cell_index=None, box=None, edge=False,
                        crop=_png(), crop_type="image/png", run="bloodmnist", checkpoint_sha256="abc",
                        predicted="neutrophil", confidence=0.9, probabilities={"neutrophil": 0.9})  # fmt: skip
    r = client.post("/v1/adapt", json={"cases": ["empty case"]}, headers=reviewer)
    assert r.status_code == 202
    for _ in range(100):
        job = client.get("/v1/adapt", headers=reviewer).json()
        if job["state"] != "running":
            break
        time.sleep(0.05)
    assert job["state"] == "failed" and "no reviewed cells" in job["error"]


@pytest.mark.slow
def test_adapting_from_the_desk_on_another_labs_reviewed_cells(desk_home):
    """The whole job: d1's cells reviewed with their true types, adapted, scored on the fifth held out."""
    client, tokens, _copy, desk = desk_home
    desk.adapt_steps = 30
    store = desk.store
    per_type = {}
    for f in sorted(Path(EXTERNAL).rglob("*.*")):
        t = f.parent.name
        if t not in store.classes or per_type.get(t, 0) >= 8 or f.suffix.lower() not in (".png", ".jpg", ".bmp"):
            continue
        per_type[t] = per_type.get(t, 0) + 1
        cid = store.add_cell("d1", source=f.name, image_sha256=f"sha-{f.name}", cell_index=None, box=None, edge=False,
                             crop=f.read_bytes(), crop_type="image/png" if f.suffix.lower() == ".png" else
                             "image/jpeg" if f.suffix.lower() == ".jpg" else "image/bmp", run="bloodmnist",
                             checkpoint_sha256="abc", predicted="neutrophil", confidence=0.5,
                             probabilities={"neutrophil": 0.5})  # fmt: skip
        store.review(cid, t, "Ana")
    assert len(per_type) >= 4
    reviewer, admin = _auth(tokens["reviewer"]), _auth(tokens["admin"])
    assert client.post("/v1/adapt", json={"cases": ["d1"]}, headers=reviewer).status_code == 202
    assert client.post("/v1/adapt", json={"cases": ["d1"]}, headers=reviewer).status_code == 409  # one at a time
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        job = client.get("/v1/adapt", headers=reviewer).json()
        if job["state"] != "running":
            break
        time.sleep(1)
    assert job["state"] == "done", job
    assert job["cells"]["held_out"] >= len(per_type) and job["steps"] >= 30
    served, new = job["scores"]
    assert served["run"] == "bloodmnist" and new["run"] == job["run"]
    for s in (served, new):
        assert 0 <= s["agreement"] <= 1 and s["reference_images"] == 64 and 0.5 <= s["reference_accuracy"] <= 1
        assert sum(v["cells"] for v in s["per_type"].values()) == job["cells"]["held_out"]
    r = client.post("/v1/served/promote", json={"run": job["run"]}, headers=admin)
    assert r.status_code == 200 and client.app.state.service.run_dir.name == job["run"]
