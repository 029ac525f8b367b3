"""The memory plan (app/picture/plan.py): the whole image where the run fits, else the largest core that
fits (a multiple of the layers' alignment), a shorter L-BFGS history when its vectors leave no room, and
a refusal that says what would fit; --tile N and --tile 0; the record a resumed run reads back."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from scratchnst.app.files.images import long_side_dims
from scratchnst.app.picture import memory, plan
from scratchnst.app.picture.settings import Settings
from scratchnst.core import host
from scratchnst.core.preprocess import MIN_SIDE
from scratchnst.core.tiled import plan_tiles
from scratchnst.errors import ScratchnstError

CONTENT, STYLES = (640, 480), [(512, 700)]
GB = 2**30


@pytest.fixture(autouse=True)
def _two_threads(monkeypatch):
    """The conv bands the model counts depend on the host threads: fix them."""
    monkeypatch.setattr(host, "THREADS", 2)


def _settings(**options) -> Settings:
    return Settings(**{"size": 1024, "scales": (1.0,), "iterations": 1, **options}).validated(1)


def _tiled(s: Settings, core: int, **keywords) -> int:
    """tiled_peak_bytes of the last scale of a run of `s` in cores of `core` px (the scale before it
    counted)."""
    *before, side = plan.scale_sizes(s.size, s.scales)
    dims = long_side_dims(*CONTENT, side)
    styles = [long_side_dims(*st, max(MIN_SIDE, round(side * s.style_scale))) for st in STYLES]
    previous = long_side_dims(*CONTENT, before[-1]) if before else None
    return memory.tiled_peak_bytes(s, dims, styles, core, previous=previous, **keywords)


def test_a_run_that_fits_is_untiled_with_the_untiled_estimate():
    s = _settings(size=512, scales=(0.5, 1.0), max_memory="8G")
    p = plan.make_plan(s, CONTENT, STYLES)
    assert [(x.size, x.width, x.height, x.core, x.tiles) for x in p.scales] == [(256, 256, 192, None, 1), (512, 512, 384, None, 1)]
    assert not p.tiled and p.notes == () and [x.history for x in p.scales] == [20, 20] and p.budget == 8 * GB
    assert p.estimate == memory.estimate_peak_bytes(s, CONTENT, STYLES) == p.scales[-1].estimate


def test_a_smaller_budget_gets_the_largest_core_that_fits():
    s = _settings(scales=(0.25, 1.0), iterations=60)
    whole = memory.estimate_peak_bytes(s, CONTENT, STYLES)
    s = replace(s, max_memory=whole - 1)
    p = plan.make_plan(s, CONTENT, STYLES)
    coarse, fine = p.scales
    assert coarse.core is None and coarse.estimate <= s.max_memory  # the coarse scale still fits whole
    assert fine.core is not None and fine.core % 16 == 0 and fine.core >= plan.PREFERRED_CORE
    assert fine.estimate == _tiled(s, fine.core) <= s.max_memory and p.estimate == fine.estimate
    assert coarse.history == fine.history == 20 and len(p.notes) == 1 and p.notes[0].startswith("the whole picture needs")
    # No core that cuts the image into fewer tiles fits.
    per_side = -(-1024 // fine.core)
    fewer = -(-(-(-1024 // (per_side - 1))) // 16) * 16
    assert _tiled(s, fewer) > s.max_memory
    tiles = plan_tiles(768, 1024, fine.core, s.content_layers + s.style_layers)
    assert fine.tiles == len(tiles) and fine.halo_overhead == round(sum(t.crop.area for t in tiles) / (768 * 1024), 4)
    assert not fine.keep_forward and _tiled(s, fine.core, keep_forward=True) > s.max_memory


def test_when_the_vectors_dominate_the_history_is_shortened_with_a_note():
    s = _settings(size=2048, max_memory="2G", iterations=60)
    p = plan.make_plan(s, CONTENT, STYLES)
    (scale,) = p.scales
    h = scale.history
    assert 1 <= h < 20 and scale.core >= plan.PREFERRED_CORE and scale.estimate <= 2 * GB
    assert p.notes[0] == (f"--lbfgs-history {h} at 2048x1536 instead of 20: each pair is two images of the scale's size in "
                          "memory, and with more pairs tiles of 256 px or more do not fit in 2.00 GB allowed by --max-memory")
    assert scale.estimate == _tiled(replace(s, lbfgs_history=h), scale.core)
    assert _tiled(replace(s, lbfgs_history=h + 1), plan.PREFERRED_CORE) > 2 * GB  # one pair more leaves no room


def test_a_history_longer_than_the_iterations_costs_nothing():
    """L-BFGS adds at most one pair per iteration: 2 iterations hold 2 pairs whatever --lbfgs-history says."""
    s = _settings(size=2048, max_memory="2G", iterations=2)
    p = plan.make_plan(s, CONTENT, STYLES)
    assert p.scales[0].history == 20 and p.notes[0].startswith("the whole picture needs")
    assert p.scales[0].estimate == _tiled(replace(s, lbfgs_history=2), p.scales[0].core) == _tiled(s, p.scales[0].core)


def test_a_budget_too_small_for_anything_says_what_would_fit():
    s = _settings(size=4000, max_memory="1G")
    with pytest.raises(ScratchnstError) as info:
        plan.make_plan(s, CONTENT, STYLES)
    message = str(info.value)
    assert re.match(r"^estimated peak memory [0-9.]+ GB > 1\.00 GB allowed by --max-memory, even tiled \(16-px cores, "
                    r"--lbfgs-history 1\); largest --size that fits: \d+, or --max-memory [0-9.]+G$", message), message
    best = int(message.split("largest --size that fits: ")[1].split(",")[0])
    assert plan.make_plan(replace(s, size=best), CONTENT, STYLES).estimate <= GB  # the promise holds
    with pytest.raises(ScratchnstError):
        plan.make_plan(replace(s, size=best + 1), CONTENT, STYLES)
    enough = memory.parse_bytes(message.split("--max-memory ")[1])
    assert plan.make_plan(replace(s, max_memory=enough), CONTENT, STYLES).estimate <= enough


def test_adam_is_named_when_it_would_fit():
    s = _settings(size=3000)
    adam = replace(s, optimizer="adam")
    budget = _tiled(adam, 16) + 1  # Adam's 6 vectors fit, L-BFGS's 10 (one pair) do not
    with pytest.raises(ScratchnstError, match=r", or --optimizer adam$"):
        plan.make_plan(replace(s, max_memory=budget), CONTENT, STYLES)
    assert plan.make_plan(replace(adam, max_memory=budget), CONTENT, STYLES).scales[0].core == 16


def test_tile_n_tiles_every_scale_larger_than_a_core():
    s = _settings(scales=(0.25, 1.0), tile=512, max_memory="20G")
    coarse, fine = plan.make_plan(s, CONTENT, STYLES).scales
    assert coarse.core is None and (fine.core, fine.tiles) == (512, 4)
    assert fine.keep_forward and fine.estimate == _tiled(s, 512, keep_forward=True)  # the forwards fit: kept
    tight = replace(s, max_memory=_tiled(s, 512) + 1)
    assert not plan.make_plan(tight, CONTENT, STYLES).scales[1].keep_forward
    with pytest.raises(ScratchnstError, match=r"even tiled \(512-px cores, --lbfgs-history 1\).*, or --tile \d+$"):
        plan.make_plan(replace(s, size=3000, max_memory=2 * GB), CONTENT, STYLES)


def test_tile_0_never_tiles_and_refuses_as_before():
    s = _settings(size=2048, max_memory="2G", tile=0)
    with pytest.raises(ScratchnstError) as info:
        plan.make_plan(s, CONTENT, STYLES)
    with pytest.raises(ScratchnstError) as before:
        memory.check_fits(s, CONTENT, STYLES)
    assert str(info.value) == str(before.value) and "largest --size that fits" in str(info.value)
    fits = replace(s, size=256)
    assert not plan.make_plan(fits, CONTENT, STYLES).tiled


def test_an_unknown_budget_tiles_only_when_told(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda xp=None: None)
    s = _settings(size=30000)
    p = plan.make_plan(s, CONTENT, STYLES)
    assert not p.tiled and p.budget is None
    p = plan.make_plan(replace(s, size=2048, tile=1024), CONTENT, STYLES)
    assert [(x.core, x.keep_forward, x.history) for x in p.scales] == [(1024, False, 20)]


def test_the_plan_reads_back_from_its_record():
    p = plan.make_plan(_settings(size=2048, scales=(0.25, 1.0), max_memory="2G"), CONTENT, STYLES)
    assert plan.Plan.from_dict(p.as_dict()) == p
    with pytest.raises(ScratchnstError, match="the manifest's memory plan cannot be read"):
        plan.Plan.from_dict({"scales": [{"size": 1}]})


def test_a_plan_recorded_with_one_history_reads_as_that_history_at_every_scale():
    """Manifests before per-scale histories record one "lbfgs_history" for the run (resume reads them)."""
    p = plan.make_plan(_settings(size=2048, scales=(0.25, 1.0), max_memory="2G"), CONTENT, STYLES)
    old = p.as_dict()
    old["lbfgs_history"] = 3
    for scale in old["scales"]:
        del scale["history"]
    assert [s.history for s in plan.Plan.from_dict(old).scales] == [3, 3]
    del old["lbfgs_history"]
    with pytest.raises(ScratchnstError, match="the manifest's memory plan cannot be read"):
        plan.Plan.from_dict(old)


def test_only_the_scales_that_need_it_shorten_the_history():
    """A finished scale's pairs are dropped, so each scale's history is its own: at 8192 px in 16G
    the small scales keep all 20 pairs and only the tiled large ones shorten it, each named in the
    note."""
    s = Settings(size=8192, max_memory="16G").validated(1)
    p = plan.make_plan(s, (512, 512), [(512, 512)])
    assert [x.size for x in p.scales] == [512, 1024, 2048, 4096, 8192]
    assert [x.history for x in p.scales[:3]] == [20, 20, 20] and 1 <= p.scales[-1].history < 20
    assert all(x.estimate <= 16 * GB for x in p.scales)
    shortened = [x for x in p.scales if x.history < 20]
    at = ", ".join(f"{x.history} at {x.width}x{x.height}" for x in shortened)
    assert p.notes[0].startswith(f"--lbfgs-history {at} instead of 20: ")
    for x, iterations in zip(p.scales, s.scale_iterations()):  # one pair more leaves no room for a core of PREFERRED_CORE px
        if x.history == 20:
            continue
        dims = (x.width, x.height)
        previous = long_side_dims(512, 512, x.size // 2)
        more = replace(s, lbfgs_history=x.history + 1, iterations=iterations)
        more = memory.tiled_peak_bytes(more, dims, [dims], plan.PREFERRED_CORE, previous=previous)
        assert more > 16 * GB


# -- through the command line -----------------------------------------------------------------------


@pytest.mark.weights
@pytest.mark.usefixtures("weights_env")
def test_a_budget_too_small_is_one_line_before_the_net(tmp_path, pics, out, tiny, run_cli, refused):
    """Refused before the weights are read (they do not exist)."""
    r = run_cli("stylize", *map(str, pics), "-o", str(out), *tiny.argv, "--size", "4000", "--max-memory", "1G",
                "--weights", str(tmp_path / "no.h5"), cwd=tmp_path)
    refused(r, out, "estimated peak memory", "allowed by --max-memory, even tiled", "largest --size that fits: ")


def test_a_finished_scale_counts_only_the_vectors_it_keeps():
    """The scale before holds x and its gradient once it is done (optim's finish), not its L-BFGS
    pairs: 2 · 3·w·h values, worked by hand against the model without a scale before."""
    s = _settings(size=2048, scales=(0.5, 1.0), lbfgs_history=20, iterations=60)
    dims, previous = long_side_dims(*CONTENT, 2048), long_side_dims(*CONTENT, 1024)
    styles = [long_side_dims(*st, 2048) for st in STYLES]
    alone = memory.tiled_peak_bytes(s, dims, styles, 512)
    after = memory.tiled_peak_bytes(s, dims, styles, 512, previous=previous)
    assert after - alone == 2 * 3 * previous[0] * previous[1] * 4
    adam = replace(s, optimizer="adam")
    assert memory.tiled_peak_bytes(adam, dims, styles, 512, previous=previous) - memory.tiled_peak_bytes(adam, dims, styles, 512) \
        == 4 * 3 * previous[0] * previous[1] * 4


def test_4096_px_plans_under_4g_with_the_default_schedule():
    """The issue's memory case, planned: the embedded pair's size at --size 4096 --max-memory 4G, the
    default scales (512 .. 4096 px): a plan, not a refusal, every scale within the budget, the largest
    tiled, the L-BFGS history shortened with its note."""
    s = Settings(size=4096, max_memory="4G").validated(1)
    p = plan.make_plan(s, (512, 512), [(512, 512)])
    assert [x.size for x in p.scales] == [512, 1024, 2048, 4096]
    assert all(x.estimate <= 4 * GB for x in p.scales) and p.estimate <= 4 * GB
    assert p.scales[-1].core is not None and p.scales[-1].core % 16 == 0
    h = p.scales[-1].history
    assert h < 20 and any(n.startswith(f"--lbfgs-history {h} at 4096x4096 instead of 20") for n in p.notes)


# -- with workers (--workers N, --scheduler) ----------------------------------------------------------


def _worker(s: Settings, core: int, threads: int = 1) -> int:
    """worker_peak_bytes of the last scale of a run of `s` in cores of `core` px."""
    return memory.worker_peak_bytes(s, long_side_dims(*CONTENT, s.size), core, threads=threads)


def test_a_local_cluster_shares_the_budget_with_its_workers():
    """Two local workers of one engine thread each: every tiled scale's estimate is this process's
    (no forward kept: the workers do not keep them) and both workers', within the budget, in smaller
    cores than the run in one process gets from the same budget."""
    s = _settings(size=2048, iterations=60, max_memory="5G")
    alone = plan.make_plan(s, CONTENT, STYLES)
    p = plan.make_plan(s, CONTENT, STYLES, workers=plan.Workers(2, 1))
    (scale,) = p.scales
    assert p.workers == 2 and scale.core < alone.scales[0].core and not scale.keep_forward and scale.history == 20
    assert scale.worker_estimate == _worker(s, scale.core)
    assert scale.estimate == _tiled(s, scale.core) + 2 * scale.worker_estimate <= 5 * GB
    per_side = -(-2048 // scale.core)  # no core that cuts the image into fewer tiles fits
    fewer = -(-(-(-2048 // (per_side - 1))) // 16) * 16
    assert _tiled(s, fewer) + 2 * _worker(s, fewer) > 5 * GB
    assert p.notes[-1] == (f"the 2 local workers take up to {memory.format_bytes(2 * scale.worker_estimate)} of the 5.00 GB "
                           f"allowed by --max-memory: {scale.core}-px cores at 2048x1536 instead of {alone.scales[0].core} px")
    assert plan.Plan.from_dict(p.as_dict()) == p


def test_a_cluster_elsewhere_is_not_in_this_machines_budget():
    s = _settings(size=2048, iterations=60, max_memory="5G")
    alone = plan.make_plan(s, CONTENT, STYLES).scales[0]
    p = plan.make_plan(s, CONTENT, STYLES, workers=plan.Workers(0, 1))
    (scale,) = p.scales
    assert p.workers == 0 and scale.core == alone.core and scale.estimate == _tiled(s, scale.core)
    assert scale.worker_estimate == _worker(s, scale.core) and not scale.keep_forward


def test_untiled_scales_count_the_local_workers_idle():
    s = _settings(size=512, scales=(0.5, 1.0), max_memory="8G")
    p = plan.make_plan(s, CONTENT, STYLES, workers=plan.Workers(3, 1))
    idle = memory.BASELINE + 2 * memory.CANONICAL_SIZE  # the process, the float32 net it keeps and the file it read
    assert not p.tiled and p.estimate == memory.estimate_peak_bytes(s, CONTENT, STYLES) + 3 * idle


def test_too_many_local_workers_are_named_in_the_refusal():
    """A budget that holds this process and one worker's tiles of 16 px, not two: the refusal says
    --workers 1 would fit (each worker then has both cores' threads)."""
    s = _settings(size=2048, iterations=1, lbfgs_history=1)
    one = _tiled(s, 16) + _worker(s, 16, threads=2)
    with pytest.raises(ScratchnstError, match=r", or --workers 1$"):
        plan.make_plan(replace(s, max_memory=one), CONTENT, STYLES, workers=plan.Workers(2, 1))
    assert plan.make_plan(replace(s, max_memory=one), CONTENT, STYLES, workers=plan.Workers(1, 2)).scales[0].core == 16
    alone = _tiled(s, 16)  # this process fits, with one worker beside it nothing does
    with pytest.raises(ScratchnstError, match=r", or without --workers$"):
        plan.make_plan(replace(s, max_memory=alone), CONTENT, STYLES, workers=plan.Workers(1, 2))


def test_a_resumed_plan_is_estimated_again_for_its_new_workers():
    """The recorded cores and histories stay; the estimates follow the workers; a local cluster that
    no longer fits is refused, naming the workers that would."""
    s = _settings(size=2048, iterations=60, tile=512, max_memory="20G")
    recorded = plan.make_plan(s, CONTENT, STYLES)
    assert recorded.scales[0].keep_forward and recorded.workers == 0
    again = plan.with_workers(recorded, s, CONTENT, STYLES, workers=plan.Workers(2, 1))
    (scale,) = again.scales
    assert (scale.core, scale.tiles, scale.history, scale.keep_forward) == (512, recorded.scales[0].tiles, 20, False)
    assert scale.estimate == _tiled(s, 512) + 2 * _worker(s, 512) and again.workers == 2
    back = plan.with_workers(again, s, CONTENT, STYLES)  # in one process again: no workers, the forwards not kept
    assert (back.workers, back.estimate, back.scales[0].worker_estimate, back.scales[0].keep_forward) == (0, _tiled(s, 512), 0, False)
    one = _tiled(s, 512) + _worker(s, 512, threads=4)
    with pytest.raises(ScratchnstError) as info:
        plan.with_workers(recorded, replace(s, max_memory=one), CONTENT, STYLES, workers=plan.Workers(4, 1))
    assert str(info.value) == (f"the run's recorded plan with 4 local workers needs an estimated "
                               f"{memory.format_bytes(_tiled(s, 512) + 4 * _worker(s, 512))} > {memory.format_bytes(one)} "
                               "allowed by --max-memory; resume with --workers 1")
    with pytest.raises(ScratchnstError, match="; resume without --workers$"):
        plan.with_workers(recorded, replace(s, max_memory=_tiled(s, 512)), CONTENT, STYLES, workers=plan.Workers(1, 4))


def test_the_core_a_workers_memory_holds():
    s = _settings(size=2048, tile=1024)
    p = plan.make_plan(s, CONTENT, STYLES, workers=plan.Workers(0, 1))
    room = _worker(s, 512)
    assert plan.worker_core(s, p, room) == 512 and _worker(s, 528) > room
    assert plan.worker_core(s, p, _worker(s, 16) - 1) is None


def test_a_plan_recorded_before_workers_reads_as_none():
    p = plan.make_plan(_settings(size=2048, scales=(0.25, 1.0), max_memory="2G"), CONTENT, STYLES)
    old = p.as_dict()
    del old["workers"]
    for scale in old["scales"]:
        del scale["worker_estimate"]
    assert plan.Plan.from_dict(old) == p
