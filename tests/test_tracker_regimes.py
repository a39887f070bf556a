"""The tracker regime matrix (lab/track_regimes.py) through the real evaluation code (lab/track_eval.py), reduced to
a few short sequences: metrics are computed for ours and a peer, the split is recorded, real TUD trajectories load,
and our tracker beats a deliberately crippled configuration of itself."""
from __future__ import annotations

import argparse
import math
from dataclasses import replace

import numpy as np
import pytest

from lab.track_eval import (
    add_args,
    available_regimes,
    regime_clips,
    regime_report,
    regime_scores,
    regimes_from_args,
    score,
    select_regimes,
)
from lab.track_regimes import (
    MOT15_SEQUENCES,
    MOT17_SEQUENCES,
    REGIMES,
    TUD_DRAWS,
    Detector,
    Regime,
    motchallenge_truth,
    synth_truth,
    tud_dir,
    tud_truth,
)
from pipeline.tracker import ByteTracker


def _short(name: str, split: str, detector: Detector, **kw: object) -> Regime:
    return Regime(name, split, detector, seeds=(3000,), seconds=4.0, **kw)  # type: ignore[arg-type]


def test_split_is_recorded_and_real_motion_is_held_out() -> None:
    splits = {r.split for r in REGIMES}
    assert splits == {"tune", "held-out"}
    assert all(r.split == "held-out" for r in REGIMES if r.tud)
    tune_seeds = {s for r in REGIMES if r.split == "tune" for s in r.seeds}
    held_seeds = {s for r in REGIMES if r.split == "held-out" for s in r.seeds}
    assert tune_seeds and held_seeds and not tune_seeds & held_seeds
    assert {r.name for r in select_regimes("tune")} == {r.name for r in REGIMES if r.split == "tune"}


def test_tuning_regimes_span_every_family_at_other_values() -> None:
    """Every axis the held-out regimes vary has a tuning counterpart, never at the held-out value itself."""
    tune = [r for r in REGIMES if r.split == "tune"]
    held = [r for r in REGIMES if r.split == "held-out" and not r.tud]
    base = Detector()

    def axes(r: Regime) -> dict[str, object]:
        d = r.detector
        return {"score": (d.score, d.score_std, d.fp_score, d.fp_score_std), "jitter": d.jitter,
                "miss": (d.miss, d.occlusion_miss), "fp": d.fp_rate, "frames": (d.fps, d.drop, d.subsample),
                "size": (r.width, r.height), "crowd": r.max_objects, "speed": r.speed}

    default = axes(Regime("base", "tune", base))
    for axis in default:
        held_values = {axes(r)[axis] for r in held} - {default[axis]}
        tune_values = {axes(r)[axis] for r in tune} - {default[axis]}
        assert held_values and tune_values, axis
        assert not held_values & tune_values, axis  # tuned on other values than those reported
    assert not {(r.detector, r.width, r.height, r.max_objects, r.speed) for r in tune} & \
        {(r.detector, r.width, r.height, r.max_objects, r.speed) for r in held}
    # real motion: the MOT15 and the MOT17 tuning regimes each cover the held-out TUD regimes' detector families, at
    # other values (the base detector aside, which every family of the matrix starts from); the occlusion + false
    # positive family on both sides of the TUD values
    tud = {r.detector for r in REGIMES if r.tud}
    (tud_occlusion,) = [r.detector for r in REGIMES if r.tud and r.detector.fp_rate > base.fp_rate]
    for dataset in ("MOT15", "MOT17"):
        real = {r.detector for r in tune if r.mot == dataset}
        assert len(tud) == 4 and len(real) == 5 and real & tud == {base}, dataset
        occlusion = sorted((d.occlusion_miss, d.fp_rate) for d in real if d.fp_rate > base.fp_rate)
        assert occlusion[0] < (tud_occlusion.occlusion_miss, tud_occlusion.fp_rate) < occlusion[-1], dataset


def _write_mot_sequence(root, name: str, rows: list[str], *, fps: int = 14, size: tuple[int, int] = (640, 480),
                        length: int = 6) -> None:  # noqa: ANN001
    (root / name / "gt").mkdir(parents=True)
    (root / name / "gt" / "gt.txt").write_text("\n".join(rows) + "\n")
    (root / name / "seqinfo.ini").write_text(
        f"[Sequence]\nname={name}\nimDir=img1\nframeRate={fps}\nseqLength={length}\nimWidth={size[0]}\n"
        f"imHeight={size[1]}\nimExt=.jpg\n")


def test_mot15_sequences_load_with_their_frame_size_and_rate(tmp_path) -> None:  # noqa: ANN001
    """A MOTChallenge gt.txt + seqinfo.ini: frames from 1, boxes clipped to the frame, rate, size and length from
    seqinfo.ini, rows marked conf 0 scored as distractors, the nearer of two overlapping people hides the other."""
    _write_mot_sequence(tmp_path, "ETH-Sunnyday", [
        "1,1,600,100,60,120,1,-1,-1,-1",  # reaches past the right edge (640): clipped
        "1,2,100,100,40,100,1,-1,-1,-1",
        "2,2,104,100,40,100,1,-1,-1,-1",
        "2,3,110,110,40,100,1,-1,-1,-1",  # lower bottom edge: in front of id 2
        "3,4,300,200,20,50,0,-1,-1,-1",  # to be ignored
    ], fps=14, size=(640, 480), length=6)
    truth = motchallenge_truth("MOT15", "ETH-Sunnyday", tmp_path)
    assert (truth.fps, truth.width, truth.height, truth.frames) == (14.0, 640, 480, 6)
    assert truth.frame.tolist() == [0, 0, 1, 1, 2] and truth.ids.tolist() == [1, 2, 2, 3, 4]
    assert truth.boxes[0].tolist() == [600, 100, 640, 220] and truth.visibility[0] == pytest.approx(40 / 60)
    assert truth.visibility[2] < 0.5 and truth.visibility[3] == 1.0
    assert truth.ignored is not None and truth.ignored.tolist() == [False] * 4 + [True]
    with pytest.raises(FileNotFoundError, match="Venice-2"):
        motchallenge_truth("MOT15", "Venice-2", tmp_path)


def test_mot17_sequences_keep_people_only_and_use_the_annotated_visibility(tmp_path) -> None:  # noqa: ANN001
    """MOT17 rows carry a class and a visibility: pedestrians are scored, static people, people on vehicles,
    distractors and reflections are distractors (a person detector fires on them), vehicles and occluders are left
    out; visibility is the annotated one (occlusion by a car counts). A detector-named directory is found too."""
    _write_mot_sequence(tmp_path, "MOT17-05-FRCNN", [
        "1,1,100,100,40,100,1,1,0.9",
        "1,2,300,100,40,100,1,7,1",  # static person: a distractor
        "1,3,200,200,80,60,0,3,1",  # a car: not a person, left out
        "2,1,104,100,40,100,1,1,0.15",  # behind a car: under 20 % visible
        "2,4,400,300,40,100,0,1,0.6",  # marked to be ignored
    ], fps=14, size=(640, 480), length=3)
    truth = motchallenge_truth("MOT17", "MOT17-05", tmp_path)
    assert truth.name == "MOT17-05" and (truth.fps, truth.frames) == (14.0, 3)
    assert truth.ids.tolist() == [1, 2, 1, 4] and truth.visibility.tolist() == [0.9, 1.0, 0.15, 0.6]
    assert truth.ignored is not None and truth.ignored.tolist() == [False, True, False, True]
    for i, name in enumerate(n for n in MOT17_SEQUENCES if n != "MOT17-05"):
        _write_mot_sequence(tmp_path, name, [f"{f},{i + 1},{10 * f},50,30,80,1,1,1" for f in range(1, 6)], fps=30)
    regime = next(r for r in REGIMES if r.mot == "MOT17")
    clips = regime_clips(regime, mot_roots={"MOT17": tmp_path})
    assert [c.name for c in clips] == list(MOT17_SEQUENCES)
    people = clips[MOT17_SEQUENCES.index("MOT17-05")]
    assert people.fps == 14.0 and people.gt_ids.tolist() == [1, 2, 1, 4]  # the car is no ground truth


def test_tud_is_never_read_from_the_mot15_tuning_set(tmp_path) -> None:  # noqa: ANN001
    """TUD-Campus and TUD-Stadtmitte ship with MOT15 too, but they are the held-out real motion: the tuning regimes
    take the other nine sequences, and the loader refuses a TUD name even where its files are present."""
    assert len(MOT15_SEQUENCES) == 9 and not any(n.upper().startswith("TUD") for n in MOT15_SEQUENCES)
    for i, name in enumerate((*MOT15_SEQUENCES, "TUD-Campus")):
        _write_mot_sequence(tmp_path, name, [f"{f},{i + 1},{10 * f},50,30,80,1,-1,-1,-1" for f in range(1, 6)])
    with pytest.raises(ValueError, match="held out"):
        motchallenge_truth("MOT15", "TUD-Campus", tmp_path)
    regime = next(r for r in REGIMES if r.mot == "MOT15")
    clips = regime_clips(regime, mot_roots={"MOT15": tmp_path})
    assert [c.name for c in clips] == list(MOT15_SEQUENCES)
    assert all(r.split == "tune" for r in REGIMES if r.mot)


def test_absent_mot_data_leaves_its_regimes_out(tmp_path, caplog) -> None:  # noqa: ANN001
    """Each optional real-motion tuning set is left out on its own, in one log line, when its directory is absent."""
    with caplog.at_level("WARNING", logger="lab.track_eval"):
        kept = available_regimes(REGIMES, {"MOT15": tmp_path / "absent", "MOT17": tmp_path})
    assert [r.name for r in kept] == [r.name for r in REGIMES if r.mot != "MOT15"]
    assert len(caplog.records) == 1 and "MOT15" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="lab.track_eval"):
        kept = available_regimes(REGIMES, {"MOT15": tmp_path / "absent", "MOT17": tmp_path / "absent"})
    assert [r.name for r in kept] == [r.name for r in REGIMES if not r.mot]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "MOT15" in messages[0] and "MOT17" in messages[1]
    assert available_regimes(REGIMES, {"MOT15": tmp_path, "MOT17": tmp_path}) == list(REGIMES)  # present: all
    parser = argparse.ArgumentParser()
    add_args(parser)
    with pytest.raises(SystemExit) as stop:  # nothing left to run: a usage error, not an empty report
        regimes_from_args(parser.parse_args(["--regimes", "MOT15", "--mot15-dir", str(tmp_path / "absent")]))
    assert stop.value.code == 2


def test_simulated_detector_applies_its_noise_model() -> None:
    truth = synth_truth(3000, seconds=4.0)
    assert truth.frames == 120 and len(truth.boxes) > 100 and (truth.visibility <= 1.0 + 1e-9).all()
    clean = Detector(miss=0.0, occlusion_miss=0.0, fp_rate=0.0, jitter=0.0, score_std=0.0, occlusion_score=0.0)
    frame, boxes, scores, _ = clean.detect(truth, seed=1)
    visible = int((truth.visibility > 0.05).sum())
    assert 0.98 * visible <= len(boxes) <= visible  # slivers under 2 px at the frame edge are dropped
    assert np.allclose(scores, clean.score)
    noisy = replace(clean, miss=0.3, fp_rate=3.0, fp_score=0.2, fp_score_std=0.0)
    frame, boxes, scores, _ = noisy.detect(truth, seed=1)
    n_fp = int(np.isclose(scores, 0.2).sum())
    assert abs(n_fp / truth.frames - 3.0) < 0.6  # Poisson(3) per frame
    assert 0.6 < (len(boxes) - n_fp) / (truth.visibility > 0.05).sum() < 0.8  # 30 % missed
    kept = replace(clean, fps=10.0, drop=0.3).kept_frames(truth, seed=1)
    assert kept[0] == 0 and set(np.diff(kept)) <= {3, 6, 9, 12, 15} and len(kept) < 40


def test_clips_carry_the_frame_size_the_tracker_needs(tmp_path) -> None:  # noqa: ANN001
    """Ours gets each sequence's frame size (its re-identification's border guard): the regime's, kept through the
    clip cache."""
    from lab.track_clips import Clip

    clip = regime_clips(_short("s", "tune", Detector(), width=480, height=270), seconds=1.0)[0]
    assert clip.frame_size == (480, 270)
    assert (clip.det_boxes[:, 2] <= 480).all() and (clip.det_boxes[:, 3] <= 270).all()
    clip.save(tmp_path / "c.npz")
    assert Clip.load(tmp_path / "c.npz").frame_size == (480, 270)


def test_reduced_matrix_scores_ours_and_a_peer() -> None:
    pytest.importorskip("trackers")
    regimes = [_short("t", "tune", Detector()), _short("h", "held-out", Detector(score=0.45, fp_score=0.2))]
    scores = regime_scores(regimes, ["ours", "bytetrack"], seconds=4.0)
    assert [(s.condition, s.tracker) for s in scores] == [("t", "ours"), ("t", "bytetrack"), ("h", "ours"),
                                                          ("h", "bytetrack")]
    for s in scores:
        assert all(math.isfinite(v) for v in (s.MOTA, s.IDF1, s.HOTA)) and 0.0 < s.IDF1 <= 1.0 and s.IDSW >= 0
    by = {(s.condition, s.tracker): s for s in scores}
    # an under-confident detector (true objects around 0.45): ByteTrack at its defaults (0.7 to start a track)
    # starts almost nothing; ours adapts its thresholds to the score distribution
    assert by["h", "ours"].MOTA > by["h", "bytetrack"].MOTA + 0.2
    text, ok = regime_report(scores, regimes)
    assert "| h | held-out |" in text and "average, held-out" in text and ok


def test_a_regime_of_several_detector_draws_scores_each_and_prints_the_gap_error() -> None:
    """A regime that runs the detector several times per sequence (TUD) also scores each run on its own, and the
    verdict gives ours' gap to the best peer with its standard error over the runs, so a reader can tell a gap of
    the trackers from one of the draw."""
    pytest.importorskip("trackers")
    regime = _short("h", "held-out", Detector(score=0.6, miss=0.2, fp_rate=1.5), draws=4)
    scores = regime_scores([regime], ["ours", "bytetrack"], seconds=3.0)
    clips = regime_clips(regime, seconds=3.0)
    for s in scores:
        assert len(s.per_draw) == 4 and len(set(s.per_draw)) > 1  # the draws differ
        alone = score(clips[2::4], s.tracker, 1, "h")  # the third draw's clips alone
        assert s.per_draw[2] == pytest.approx((alone.MOTA, alone.IDF1))
        assert min(m for m, _ in s.per_draw) <= s.MOTA <= max(m for m, _ in s.per_draw)
    ours, peer = (np.array(s.per_draw) for s in scores)
    se = 100 * (ours - peer).std(axis=0, ddof=1) / 2.0
    text, _ = regime_report(scores, [regime])
    row = next(line for line in text.splitlines() if line.startswith("| h |") and "draws" in line)
    assert f"± {se[0]:.1f} /" in row and f"± {se[1]:.1f} (4 draws)" in row
    single, _ = regime_report(regime_scores([replace(regime, draws=1)], ["ours", "bytetrack"], seconds=3.0),
                              [regime])
    assert not any("draws)" in line for line in single.splitlines() if line.startswith("| h |"))  # one draw: no error


def test_ours_beats_a_crippled_configuration() -> None:
    pytest.importorskip("trackers")
    regime = _short("occluded, under-confident", "held-out",
                    Detector(score=0.5, occlusion_miss=1.6, occlusion_score=0.4, fp_rate=1.0, fp_score=0.3),
                    max_objects=12)
    crippled = {"adaptive": False, "n_init": 4, "track_buffer_s": 0.1, "weak_confirm_s": 0.0}
    good, bad = regime_scores([regime], ["ours"], seconds=4.0, params={}) + \
        regime_scores([regime], ["ours"], seconds=4.0, params={"ours": crippled})
    assert good.MOTA > bad.MOTA + 0.1 and good.IDF1 > bad.IDF1 + 0.1


def test_real_pedestrian_trajectories_load() -> None:
    if not (tud_dir() / "motmetrics" / "data" / "TUD-Campus" / "gt.txt").is_file():
        pytest.skip("TUD ground truth not fetched: make tud-data")
    truth = tud_truth("TUD-Campus")
    assert truth.frames == 71 and truth.fps == 25.0 and len(np.unique(truth.ids)) == 8
    assert (truth.visibility < 0.99).any()  # people occlude each other
    clips = regime_clips(next(r for r in REGIMES if r.tud))
    assert [c.name for c in clips] == [f"TUD-{n}-{k}" for n in ("Campus", "Stadtmitte") for k in range(TUD_DRAWS)]
    assert all(len(c.det_scores) for c in clips)


def test_adaptive_thresholds_follow_the_detector() -> None:
    """The high threshold settles between true objects' and false positives' scores, wherever those are."""
    rng = np.random.default_rng(0)
    for tp, fp in ((0.45, 0.15), (0.95, 0.75)):
        tracker = ByteTracker()
        for f in range(80):
            xs = 60.0 * np.arange(5) + f
            boxes = np.column_stack([xs, np.full(5, 50.0), xs + 20, np.full(5, 100.0)])
            fp_box = rng.uniform(0, 400, 2)
            boxes = np.vstack([boxes, [*fp_box, *(fp_box + 20)]])
            scores = np.r_[rng.normal(tp, 0.03, 5), rng.normal(fp, 0.03)].clip(0.01, 0.99)
            tracker.update(boxes, scores, np.ones(6, np.int64), timestamp=f / 25)
        high, new, _ = tracker.thresholds()
        assert fp + 0.05 < high < tp - 0.05 and new == high
