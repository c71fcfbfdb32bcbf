"""README numbers come from results/ files, and a missing file is said, never invented."""

import json

from soar import report


def test_blocks_render_from_results_and_missing_files_are_named(tmp_path):
    (tmp_path / "results/fail_at_k").mkdir(parents=True)
    (tmp_path / "results/fail_at_k/metrics.json").write_text(json.dumps({"k": 8, "pools": {"gsm8k_test": {
        "problems": 48, "hard": 47, "hard_fraction": 47 / 48, "sample_accuracy": 0.0026, "boxed_fraction": 0.055,
        "mean_completion_tokens": 182.0}}}))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:fail_at_k -->\nstale 99%\n<!-- /results:fail_at_k -->\n"
                      "<!-- results:soar -->\n<!-- /results:soar -->\nend\n")
    assert report.render(readme, tmp_path) == ["fail_at_k", "soar"]
    text = readme.read_text()
    assert "stale" not in text and "| gsm8k_test | 8 | 48 | 47 | 98% | 0.3% | 5.5% | 182 |" in text
    assert "_Not produced yet: `results/soar` comes from the soar stage._" in text
    assert text.startswith("intro\n") and text.endswith("end\n")
    report.render(readme, tmp_path)
    assert readme.read_text() == text  # rendering is idempotent


def test_readme_and_docs_agree_with_the_committed_results(tmp_path):
    """Every rendered block of README.md and docs/*.md equals what `python -m soar.report` makes
    from results/."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    pages = report.pages(root)
    assert root / "README.md" in pages and len(pages) > 1
    for page in pages:
        copy = tmp_path / page.name
        copy.write_text(page.read_text())
        report.render(copy, root)
        assert copy.read_text() == page.read_text(), f"{page.name} is stale: run `python -m soar.report`"


def test_sweep_block_has_one_row_per_cell_that_ran(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:sweep -->\n<!-- /results:sweep -->\n")
    report.render(readme, tmp_path)
    assert "_Not produced yet: `results/sweep` comes from the sweep stage._" in readme.read_text()
    for cell, promotions in (("tau0.01-n1", [0, 1]), ("tau0.02-n1", [])):
        (tmp_path / "results/sweep" / cell).mkdir(parents=True)
        (tmp_path / "results/sweep" / cell / "metrics.json").write_text(json.dumps({
            "outer_steps": 2, "reward_mean_all": 0.0125, "promotions": len(promotions),
            "promotion_steps": promotions, "rejection_rate_mean": 0.9, "seconds_per_step": 101.0}))
    report.render(readme, tmp_path)
    text = readme.read_text()
    assert "| tau0.01-n1 | 2 | +0.0125 | 2 | 0, 1 | 90% | 101 |" in text
    assert "| tau0.02-n1 | 2 | +0.0125 | 0 | none | 90% | 101 |" in text


def test_the_teacher_reward_ci_resamples_seeds_first(tmp_path):
    """Two grounded runs: every dataset of one gained 0.1, every dataset of the other 0. Pooled,
    their 200 datasets put the mean gain above 0 with a narrow CI; seeds are the unit of
    replication, so the two-level CI (seeds, then datasets) reaches 0 and says not shown."""
    for seed, gain in ((0, 0.1), (1, 0.0)):
        run = tmp_path / f"results/soar/grounded/seed{seed}"
        (run / "samples").mkdir(parents=True)
        (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "promotion": False}) + "\n")
        (run / "samples/step_000000.jsonl").write_text(
            "".join(json.dumps({"step": 0, "dataset": d, "grounded": gain}) + "\n" for d in range(100)))
    line = next(x for x in report.findings(tmp_path).splitlines() if "Grounded teacher reward, grounded" in x)
    assert "+0.050 ± 0.071 (mean ± SD over 2 seeds; 95% CI over seeds, then their 200 datasets: +0.000 to +0.100" in line
    assert "**not distinguishable from 0**" in line and "after it no dataset" in line


def test_teachers_that_wrote_the_same_questions_are_said_not_to_have_parted(tmp_path):
    """Two seeds, two steps: the shuffled teacher of seed 0 writes what the grounded one writes at
    both steps; seed 1's writes one question of two alike at its last step. The intrinsic teacher
    ran only seed 0, and differs there from step 0 on."""
    def run(variant, seed, steps, advantages=(0.0, 0.0)):
        (tmp_path / f"results/soar/{variant}/seed{seed}/samples").mkdir(parents=True)
        for t, (qs, a) in enumerate(zip(steps, advantages)):
            (tmp_path / f"results/soar/{variant}/seed{seed}/samples/step_{t:06d}.jsonl").write_text(
                json.dumps({"step": t, "questions": qs, "advantage": 0.0}) + "\n"
                + json.dumps({"step": t, "questions": [], "advantage": a}) + "\n")

    for seed, advantages in ((0, (0.0, 0.0)), (1, (0.0, -0.25))):  # seed 1's teacher first had a signal at step 1
        run("grounded", seed, [["1+1", "2+2"], ["3+3", "4+4"]], advantages)
    run("shuffled", 0, [["1+1", "2+2"], ["3+3", "4+4"]])
    run("shuffled", 1, [["1+1", "2+2"], ["3+3", "9+9"]])
    run("intrinsic", 0, [["5+5", "2+2"], ["7+7", "8+8"]])
    line = report.teachers_parted(tmp_path)
    assert "the intrinsic teacher's 50% at the first outer step and 0% at the last (per seed 0%)" in line
    assert "the shuffled teacher's 100% at the first outer step and 75% at the last (per seed 100%, 50%)" in line
    assert "first update with any signal (a dataset with a nonzero advantage) came at outer step none, 1 of 2" in line
    assert report.teachers_parted(tmp_path / "nothing") == ""
