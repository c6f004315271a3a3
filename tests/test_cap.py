"""CAP (runner.prune.contrastive): the contrastive terms against a hand computation on tiny tensors, bank rows
found by token ids, and the structured schedule in steps (method.iterative_steps, method.contrastive) and
unstructured CAP (method.pruner=cap) end to end on tiny models."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from runner.prune import contrastive
from runner.teacher_logits import row_key
from tests.conftest import TINY_SST2, kill_when, run_cli, safe_rglob

TINY = [a for a in TINY_SST2 if not a.startswith("model=")]


def test_terms_match_a_hand_computation():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(2, 3), dim=-1)
    bank = F.normalize(torch.randn(4, 1, 3), dim=-1)  # 4 training rows, one vector each
    bank_labels = torch.tensor([0, 1, 0, 1])
    rows, labels, tau = torch.tensor([0, 1]), torch.tensor([0, 1]), 0.5
    g = torch.Generator().manual_seed(3)
    sample = torch.randperm(4, generator=torch.Generator().manual_seed(3))[:2]
    unsup, sup = contrastive.terms(z, rows, labels, bank, bank_labels, extra=2, tau=tau, generator=g)
    # candidates: [z0, bank0, z1, bank1, bank[s0], bank[s1]]
    cand = torch.cat([z[0:1], bank[0], z[1:2], bank[1], bank[sample, 0]])
    cand_rows = [0, 0, 1, 1, *sample.tolist()]
    cand_labels = [0, 0, 1, 1, *bank_labels[sample].tolist()]
    total_u = total_s = 0.0
    pairs_u = pairs_s = 0
    for i in range(2):
        scores = [float(z[i] @ c) / tau for c in cand]
        scores[2 * i] = -1e6  # its own detached copy
        norm = math.log(sum(math.exp(s) for s in scores))
        logp = [s - norm for s in scores]
        pu = [j for j in range(len(cand)) if cand_rows[j] == i and j != 2 * i]
        ps = [j for j in range(len(cand)) if cand_labels[j] == int(labels[i]) and j != 2 * i]
        total_u += sum(logp[j] for j in pu) / len(pu)
        total_s += sum(logp[j] for j in ps) / len(ps)
        pairs_u += len(pu)
        pairs_s += len(ps)
    assert float(unsup) == pytest.approx(-total_u / pairs_u, rel=1e-5)
    assert float(sup) == pytest.approx(-total_s / pairs_s, rel=1e-5)


def test_terms_send_gradients_to_the_anchor_only():
    z = F.normalize(torch.randn(3, 4), dim=-1).requires_grad_(True)
    bank = F.normalize(torch.randn(5, 2, 4), dim=-1).requires_grad_(True)
    u, s = contrastive.terms(z, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 0]), bank, torch.tensor([0, 1, 0, 1, 0]),
                             extra=4, tau=0.1)
    (u + s).backward()
    assert z.grad.abs().sum() > 0 and bank.grad is None


def test_banks_find_rows_by_their_real_tokens():
    banks = contrastive.Banks([row_key([101, 7, 102]), row_key([101, 8, 9, 102])], torch.tensor([1, 0]))
    banks.add("finetuned", torch.eye(2))
    banks.add("snapshot", torch.eye(2))
    banks.add("snapshot", torch.eye(2))
    ids = torch.tensor([[101, 8, 9, 102], [101, 7, 102, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    assert banks.rows(ids, mask).tolist() == [1, 0]
    assert banks.rows(torch.tensor([[101, 5, 102]]), torch.ones(1, 3)) is None
    assert banks.vectors["snapshot"].shape == (2, 2, 2) and banks.vectors["finetuned"].shape == (2, 1, 2)


@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
def test_contrastive_terms_train_each_bert_family_model(family):
    from tests.test_prune_blocks import batch, tiny

    model = tiny(family).train()
    b = batch()
    out = model(**b, output_hidden_states=True)
    z = contrastive.sentence(out.hidden_states[-1], b["attention_mask"], "mean")
    assert torch.allclose(z.norm(dim=-1), torch.ones(4), atol=1e-5)
    bank = F.normalize(torch.randn(6, 1, z.shape[1]), dim=-1)
    u, s = contrastive.terms(z, torch.tensor([0, 1, 2, 3]), b["labels"], bank, torch.tensor([0, 1, 1, 0, 1, 0]),
                             extra=4, tau=0.1)
    (u + s).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "encoder.layer.1." in n and "weight" in n)


def results(root) -> dict:
    found = [p for p in root.rglob("results.json") if p.parent.name.startswith("seed") or "/prune/" in str(p)]
    found = [p for p in found if not p.parent.name.startswith("step")]
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


def test_structured_cap_in_steps_with_contrastive_terms(tmp_path, shared_data):
    proc = run_cli(*TINY, "model=tiny-bert", "method=prune", "method.pruner=structured", "method.heads=0.5",
                   "method.ffn=0.5", "method.iterative_steps=2", "method.contrastive=true", "method.alpha_kd=0.9",
                   "method.recovery_epochs=0.5", "method.cap_extra=32", f"paths.output_root={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = results(tmp_path)
    assert [s["step"] for s in r["steps"]] == [1, 2]
    assert r["steps"][0]["heads"] == pytest.approx(0.25) and r["steps"][1]["ffn"] == pytest.approx(0.5)
    assert r["steps"][0]["masked_heads"] == 2 and r["steps"][1]["masked_heads"] == 4  # 8 heads in tiny-bert
    assert sum(map(len, r["removed_heads"])) == 4 and all(k == 32 for k in r["kept_neurons"])
    # the snapshot of step 2 was taken; the contrastive terms were trained on
    run_dir = next(p.parent for p in tmp_path.rglob("done.json") if p.parent.name == "step2").parent
    assert (run_dir / "step2" / "snapshot.pt").exists() and not (run_dir / "step2" / "state.pt").exists()
    assert not (run_dir / "step1" / "snapshot.pt").exists()  # step 1 has the pre-trained and fine-tuned banks
    log = proc.stdout + proc.stderr
    assert "prune step 2/2" in log
    for term in ("loss_pretrained_unsup", "loss_finetuned_sup", "loss_snapshot_unsup"):
        assert term in log, term
    assert r["metrics"]["accuracy"] == pytest.approx(r["steps"][1]["metrics"]["accuracy"])  # removal is exact


def test_unstructured_cap_on_movement_takes_snapshots(tmp_path, shared_data):
    proc = run_cli(*TINY, "model=tiny-bert", "method=prune", "method.pruner=cap", "method.sparsity=0.5",
                   "method.alpha_kd=0.5", "method.cap_snapshot_every=4", "method.cap_extra=32",
                   f"paths.output_root={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = results(tmp_path)
    assert r["remaining"] == pytest.approx(0.5, abs=0.01)
    logged = json.dumps(r)
    assert "accuracy" in r["metrics"] and "pruned_parameters" in logged
    assert "loss_snapshot_unsup" in proc.stdout + proc.stderr  # snapshots joined the banks during training


@pytest.mark.slow  # three tiny runs, ~3 min (make test-full)
def test_structured_cap_killed_after_a_step_resumes_to_the_same_model(tmp_path, shared_data):
    """SIGKILL once step 1 is done; the rerun reloads step 1's gated weights and snapshot-free banks and ends
    where an uninterrupted run ends."""
    common = [*TINY, "model=tiny-bert", "method=prune", "method.pruner=structured", "method.heads=0.5",
              "method.ffn=0.5", "method.iterative_steps=2", "method.contrastive=true", "method.alpha_kd=0.9",
              "method.recovery_epochs=0.5", "method.cap_extra=32"]
    whole = run_cli(*common, f"paths.output_root={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    root = tmp_path / "killed"
    kill_when([*common, f"paths.output_root={root}"], lambda: bool(safe_rglob(root, "step1/done.json")),
              "its first step was done")
    resumed = run_cli(*common, f"paths.output_root={root}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stage step1: already done" in resumed.stdout + resumed.stderr
    a, b = results(tmp_path / "whole"), results(root)
    assert b["attempts"] == 2
    def kept(r):  # what training produced, without the timings
        return [(s["masked_heads"], s["gated"]["accuracy"], s["metrics"]["accuracy"], s["train"]["train_loss"])
                for s in r["steps"]] + [r["metrics"]["accuracy"], r["removed_heads"], r["kept_neurons"]]
    assert kept(a) == kept(b)


@pytest.mark.slow  # two tiny runs and the script: ~2 min (make test-full)
def test_cap_diagnostic_splits_the_gradient_into_task_and_contrastive_parts(tmp_path, shared_data):
    """recipes/head-pruning/diagnose_cap.py (the README's CAP reading): for a CAP run and its KD-only twin, the
    two parts of the CAP loss, their gradients' norms and cosine; the CAP run's snapshot joins its banks."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    common = [*TINY, "model=tiny-bert", "method=prune", "method.pruner=structured", "method.heads=0.5",
              "method.ffn=0.5", "method.iterative_steps=2", "method.alpha_kd=0.9", "method.recovery_epochs=0.5",
              "method.cap_extra=32", f"paths.output_root={tmp_path}", "seed=3"]
    for arm in ("true", "false"):
        proc = run_cli(*common, f"method.contrastive={arm}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    runs = next(p for p in safe_rglob(tmp_path, "results.json") if p.parent.name == "seed3").parents[2]
    script = str(root / "recipes" / "head-pruning" / "diagnose_cap.py")
    tiny = [a for a in TINY if not a.startswith(("train.logging", "train.save"))]
    proc = subprocess.run([sys.executable, script, "--seed", "3", "--batches", "2", "--root", str(runs), *tiny,
                           "model=tiny-bert", f"data_dir={shared_data}"],
                          capture_output=True, text=True, cwd=root, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    arms = {r["arm"]: r for r in report["runs"]}
    assert set(arms) == {"CAP", "KD only"} and all(r["share"] == 0.5 for r in report["runs"])
    assert arms["CAP"]["banks"] == {"pretrained": 1, "finetuned": 1, "snapshot": 1}  # step 2's snapshot
    assert arms["KD only"]["banks"] == {"pretrained": 1, "finetuned": 1}
    for r in arms.values():
        assert r["loss_task"] > 0 and r["loss_terms"] > 0 and r["grad_task"] > 0 and r["grad_terms"] > 0
        assert -1 <= r["cosine"] <= 1
    wrong = subprocess.run([sys.executable, script, "--seed", "3", "--root", str(runs), *tiny, "model=tiny-bert",
                            "task.max_length=16", f"data_dir={shared_data}"],
                           capture_output=True, text=True, cwd=root, timeout=600)
    assert wrong.returncode == 2 and "task overrides" in wrong.stderr.strip().splitlines()[-1]
    missing = subprocess.run([sys.executable, script, "--root", str(tmp_path / "nothing")], capture_output=True,
                             text=True, cwd=root, timeout=120)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
