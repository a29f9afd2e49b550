"""The job spec: shipped jobs and presets load, bad files fail naming the field, --set works.

References are independent of the code under test where one exists: preset files are
read with plain ``yaml.safe_load`` and turned into ``ZipVLConfig`` directly, and the
expected error paths are the paths where each test put the mistake.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from pipeline import presets
from pipeline.errors import JobError, SpecError
from pipeline.job_file import load_job
from pipeline.overrides import parse_override_value
from pipeline.spec import DEFAULT_CAPTION_PROMPT, JobSpec, parse_job
from zipvl.config import ZipVLConfig

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
MODEL_PRESETS = sorted((ROOT / "configs" / "models").glob("*.yaml"))
ZIPVL_PRESETS = sorted((ROOT / "configs" / "zipvl").glob("*.yaml"))
CAPTIONS = ROOT / "jobs" / "captions.yaml"

REQUIRED_MODEL_PRESETS = {
    "tiny-llava", "tiny-llava-next", "tiny-qwen2-vl", "tiny-qwen2.5-vl", "llava-1.5-7b",
    "llava-next-7b", "llava-next-13b", "qwen2-vl-2b", "qwen2-vl-7b", "qwen2.5-vl-7b",
    "tiny-llava-next-video", "tiny-llava-onevision", "llava-next-video-7b", "llava-onevision-7b",
}
REQUIRED_ZIPVL_PRESETS = {"paper", "tau-0.96", "default", "dense", "fast"}


def raw_job(path: Path = CAPTIONS) -> dict:
    return yaml.safe_load(path.read_text())


def write_job(tmp_path: Path, values: dict, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def spec_error(tmp_path: Path, values: dict, overrides: list[str] = ()) -> str:
    with pytest.raises(SpecError) as caught:
        load_job(write_job(tmp_path, values), overrides)
    return str(caught.value)


def reference_zipvl(preset_file: Path) -> ZipVLConfig | None:
    values = yaml.safe_load(preset_file.read_text()) or {}
    if values.get("enabled", True) is False:
        return None
    values.pop("enabled", None)
    return ZipVLConfig(**values)


# ---------------------------------------------------------------- shipped files


def test_the_required_presets_and_jobs_ship():
    assert REQUIRED_MODEL_PRESETS <= {p.stem for p in MODEL_PRESETS}
    assert REQUIRED_ZIPVL_PRESETS <= {p.stem for p in ZIPVL_PRESETS}
    assert {"captions", "vqa", "captions-s3", "video-captions"} <= {p.stem for p in JOBS}
    assert set(presets.preset_names("models")) == {p.stem for p in MODEL_PRESETS}


@pytest.mark.parametrize("job_file", JOBS, ids=lambda p: p.name)
def test_every_shipped_job_loads(job_file):
    spec = load_job(job_file)
    raw = raw_job(job_file)
    assert spec.name == raw.get("name", job_file.stem)
    assert spec.input.columns.id == raw["input"]["columns"]["id"]
    zipvl_value = raw.get("zipvl", "default")
    expected = reference_zipvl(ROOT / "configs" / "zipvl" / f"{zipvl_value}.yaml")
    assert spec.zipvl_config() == expected
    preset = yaml.safe_load((ROOT / "configs" / "models" / f"{raw['model']['preset']}.yaml")
                            .read_text())
    settings = spec.model_settings()
    assert settings.tiny == preset.get("tiny")
    assert settings.name_or_path == preset.get("name_or_path")


def test_embedded_default_is_the_tiny_captioning_job(monkeypatch):
    monkeypatch.chdir(ROOT)  # relative input paths resolve against the current directory
    spec = load_job(CAPTIONS)
    assert spec.task.type == "caption"
    assert spec.model_settings().tiny is not None
    assert spec.input.path == str(ROOT / "data" / "sample" / "images.parquet")
    assert spec.output.path == str(ROOT / "output" / "captions")
    assert spec.generation.max_new_tokens <= 32


def test_the_video_job_reads_the_shipped_clips_natively(monkeypatch):
    from pipeline.families import FAMILIES

    monkeypatch.chdir(ROOT)
    spec = load_job(ROOT / "jobs" / "video-captions.yaml")
    assert spec.input.path == str(ROOT / "data" / "sample" / "videos.parquet")
    assert spec.input.columns.video == "video" and spec.input.columns.image is None
    assert FAMILIES[spec.model_settings().family].native_video
    assert spec.video.mode == "auto" and spec.video.sampled_frames == 8


@pytest.mark.parametrize(("overrides", "field", "message"), [
    (["video.num_frames=8", "video.fps=2"], "video.fps", "not both"),
    (["video.num_frames=5000"], "video.num_frames", "at most 1024"),
    (["video.fps=0"], "video.fps", "greater than 0"),
    (["video.mode=native", "model.preset=tiny-llava"], "video.mode", "reads images only"),
    (["video.mode=sideways"], "video.mode", "native"),
])
def test_bad_video_settings_name_their_field(tmp_path: Path, overrides, field, message):
    error = spec_error(tmp_path, raw_job(), overrides)
    line = next(line for line in error.splitlines() if line.startswith(field + ":"))
    assert message in line, error


def test_video_frames_moved_to_the_video_section(tmp_path: Path):
    values = raw_job()
    values["task"]["video_frames"] = 8
    assert "task.video_frames: moved: set video.num_frames" in spec_error(tmp_path, values)


def test_video_sampling_settings_resolve(tmp_path: Path):
    assert load_job(CAPTIONS, []).video.sampled_frames == 8
    by_rate = load_job(CAPTIONS, ["video.fps=2.5", "video.max_frames=32"]).video
    assert (by_rate.sampled_frames, by_rate.fps, by_rate.max_frames) == (None, 2.5, 32)
    assert load_job(CAPTIONS, ["video.num_frames=3"]).video.sampled_frames == 3


def test_s3_job_keeps_uris():
    spec = load_job(ROOT / "jobs" / "captions-s3.yaml")
    assert spec.input.path == "s3://zipvl-demo/images/"
    assert spec.output.path == "s3://zipvl-demo/captions/"


@pytest.mark.parametrize("preset_file", MODEL_PRESETS, ids=lambda p: p.stem)
def test_every_model_preset_resolves_through_a_job(preset_file):
    spec = load_job(CAPTIONS, [f"model.preset={preset_file.stem}"])
    reference = yaml.safe_load(preset_file.read_text())
    settings = spec.model_settings()
    assert settings.preset == preset_file.stem
    if "tiny" in reference:
        assert settings.tiny == reference["tiny"] == settings.family
        assert settings.label == f"tiny:{reference['tiny']}"
    else:
        assert settings.name_or_path == reference["name_or_path"] == settings.label
        assert settings.family == reference["family"]
    for field in ("dtype", "max_image_tokens", "trust_remote_code", "revision"):
        if field in reference:
            assert getattr(settings, field) == reference[field]


@pytest.mark.parametrize("preset_file", ZIPVL_PRESETS, ids=lambda p: p.stem)
def test_every_zipvl_preset_resolves_through_a_job(preset_file):
    spec = load_job(CAPTIONS, [f"zipvl={preset_file.stem}"])
    assert spec.zipvl_config() == reference_zipvl(preset_file)
    # The same file given by path resolves to the same config.
    by_path = load_job(CAPTIONS, [f"zipvl={preset_file}"])
    assert by_path.zipvl_config() == spec.zipvl_config()


def test_zipvl_presets_mean_what_their_names_say():
    def config(value):
        return load_job(CAPTIONS, [f"zipvl={value}"]).zipvl_config()

    paper = config("paper")
    assert (paper.tau, paper.prefill, paper.num_recent_probes, paper.num_random_probes) == \
        (0.975, "qkv", 64, 64)
    assert config("tau-0.96") == dataclasses.replace(paper, tau=0.96)
    assert config("default") == ZipVLConfig()
    # fast: the default's selection with the sparse kv_local prefill at tau 0.95.
    assert config("fast") == dataclasses.replace(ZipVLConfig(), tau=0.95, prefill="kv_local")
    assert config("dense") is None
    assert config("false") is None
    assert config("true") == ZipVLConfig()


# ---------------------------------------------------------------- unknown keys

SECTION_PATHS = ["", "input", "input.columns", "task", "model", "generation", "resources",
                 "output", "ray", "zipvl"]


@pytest.mark.parametrize("section", SECTION_PATHS)
def test_unknown_key_anywhere_is_an_error_naming_it(tmp_path, section):
    values = raw_job()
    values["zipvl"] = {"tau": 0.9}  # inline, so zipvl is a section too
    node = values
    for part in filter(None, section.split(".")):
        node = node.setdefault(part, {})
    node["bogus_key"] = 1
    message = spec_error(tmp_path, values)
    expected_path = f"{section}.bogus_key" if section else "bogus_key"
    assert f"{expected_path}: unknown key 'bogus_key'" in message


@pytest.mark.parametrize("section", ["input", "output"])
def test_unknown_storage_option_is_an_error_naming_it(tmp_path, section):
    values = raw_job()
    values[section]["storage_options"] = {"endpoint": "http://localhost:9000"}
    message = spec_error(tmp_path, values)
    assert f"{section}.storage_options.endpoint: unknown key" in message
    assert "endpoint_url" in message  # the suggestion


def test_typo_gets_a_suggestion(tmp_path):
    values = raw_job()
    values["resources"]["worker"] = 2
    message = spec_error(tmp_path, values)
    assert "resources.worker: unknown key 'worker' (did you mean 'workers'?)" in message


def test_every_problem_is_reported_at_once(tmp_path):
    values = raw_job()
    values["resources"]["batch_size"] = 0
    values["generation"]["max_new_tokens"] = -1
    with pytest.raises(SpecError) as caught:
        load_job(write_job(tmp_path, values))
    problems = caught.value.problems
    assert any(p.startswith("resources.batch_size:") for p in problems)
    assert any(p.startswith("generation.max_new_tokens:") for p in problems)


# ---------------------------------------------------------------- field checks


@pytest.mark.parametrize("tau", [1.5, 0, -0.1, "high"])
def test_bad_tau_names_zipvl_tau(tmp_path, tau):
    values = raw_job()
    values["zipvl"] = {"tau": tau}
    message = spec_error(tmp_path, values)
    assert message.startswith("zipvl.tau: must be in (0, 1]")
    assert repr(tau) in message


@pytest.mark.parametrize("fraction", [1.5, -0.1, "most"])
def test_bad_max_error_fraction_names_the_field(tmp_path, fraction):
    values = raw_job()
    values["output"]["max_error_fraction"] = fraction
    assert spec_error(tmp_path, values).startswith("output.max_error_fraction:")


def test_max_error_fraction_defaults_above_the_demo_share():
    from pipeline.sample_data import BROKEN_ROWS, NUM_IMAGES

    spec = load_job(ROOT / "jobs" / "captions.yaml")
    assert spec.output.max_error_fraction == 0.1 > len(BROKEN_ROWS) / NUM_IMAGES


def test_bad_tau_in_a_preset_file_names_the_field_and_the_file(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("tau: 1.5\n")
    values = raw_job()
    values["zipvl"] = str(preset)
    message = spec_error(tmp_path, values)
    assert message.startswith("zipvl.tau:")
    assert str(preset) in message


@pytest.mark.parametrize("value, field", [
    ({"selection": "best"}, "selection"),
    ({"prefill": "sparse"}, "prefill"),
    ({"score_pooling": 2}, "score_pooling"),
    ({"ranking": "snapkv"}, "ranking"),
    ({"ranking": "recent", "num_recent_probes": 0}, "ranking"),
    ({"dense_layers": 3}, "dense_layers"),
    ({"enabled": "no"}, "enabled"),
    ({"enabled": False, "tau": 0.9}, "enabled"),
    ({"strategy": "snapkv"}, "strategy"),
    ({"strategy": {"name": "fixed_ratio", "ratio": 1.5}}, "strategy"),
    ({"strategy": {"name": "fixed_ratio"}}, "strategy"),
])
def test_bad_zipvl_fields_name_the_field(tmp_path, value, field):
    values = raw_job()
    values["zipvl"] = value
    assert spec_error(tmp_path, values).startswith(f"zipvl.{field}:")


def test_unknown_zipvl_preset_lists_the_available_ones(tmp_path):
    values = raw_job()
    values["zipvl"] = "papr"
    message = spec_error(tmp_path, values)
    assert message.startswith("zipvl: unknown preset 'papr'")
    for name in REQUIRED_ZIPVL_PRESETS:
        assert name in message


@pytest.mark.parametrize("value", [None, 3, [0.9], ""])
def test_zipvl_of_the_wrong_kind_is_an_error(tmp_path, value):
    values = raw_job()
    values["zipvl"] = value
    assert spec_error(tmp_path, values).startswith("zipvl: must be a preset name")


def test_missing_id_column_mapping(tmp_path):
    values = raw_job()
    del values["input"]["columns"]["id"]
    assert spec_error(tmp_path, values).startswith("input.columns.id: required")


def test_no_media_column_mapping(tmp_path):
    values = raw_job()
    values["input"]["columns"] = {"id": "id"}
    assert spec_error(tmp_path, values).startswith("input.columns.image:")


def test_video_only_mapping_is_fine(tmp_path):
    values = raw_job()
    values["input"]["columns"] = {"id": "id", "video": "clip"}
    spec = load_job(write_job(tmp_path, values))
    assert spec.input.columns.image is None and spec.input.columns.video == "clip"


def test_vqa_without_a_prompt_column(tmp_path):
    values = raw_job(ROOT / "jobs" / "vqa.yaml")
    del values["input"]["columns"]["prompt"]
    assert spec_error(tmp_path, values).startswith("input.columns.prompt:")


def test_caption_with_a_prompt_column(tmp_path):
    values = raw_job()
    values["input"]["columns"]["prompt"] = "question"
    assert spec_error(tmp_path, values).startswith("input.columns.prompt:")


def test_vqa_template_needs_the_question_placeholder(tmp_path):
    values = raw_job(ROOT / "jobs" / "vqa.yaml")
    values["task"]["prompt"] = "Answer briefly."
    assert spec_error(tmp_path, values).startswith("task.prompt:")


def test_task_prompt_defaults_follow_the_type(tmp_path):
    caption = raw_job()
    del caption["task"]["prompt"]
    assert load_job(write_job(tmp_path, caption)).task.prompt == DEFAULT_CAPTION_PROMPT
    vqa = raw_job(ROOT / "jobs" / "vqa.yaml")
    del vqa["task"]["prompt"]
    task = load_job(write_job(tmp_path, vqa)).task
    assert task.render_prompt("What colour is the sky?") == "What colour is the sky?"


def test_render_prompt_fills_the_question_only():
    spec = load_job(ROOT / "jobs" / "vqa.yaml", ["task.prompt=Q: {question} {not a field}"])
    assert spec.task.render_prompt("why?") == "Q: why? {not a field}"


@pytest.mark.parametrize("model", [
    {"preset": "tiny-llava", "name_or_path": "llava-hf/llava-1.5-7b-hf"},
    {"dtype": "float16"},
])
def test_exactly_one_of_preset_and_name_or_path(tmp_path, model):
    values = raw_job()
    values["model"] = model
    assert spec_error(tmp_path, values).startswith("model.preset: set exactly one of")


def test_unknown_model_preset_lists_the_available_ones(tmp_path):
    values = raw_job()
    values["model"] = {"preset": "llava-7b"}
    message = spec_error(tmp_path, values)
    assert message.startswith("model.preset: unknown preset 'llava-7b'")
    assert "llava-1.5-7b" in message


def test_bad_model_preset_file_names_the_file_and_field(tmp_path):
    preset = tmp_path / "broken.yaml"
    preset.write_text("name_or_path: some/model\ndtype: float8\n")
    values = raw_job()
    values["model"] = {"preset": str(preset)}
    message = spec_error(tmp_path, values)
    assert message.startswith("model.preset:")
    assert str(preset) in message and "dtype" in message


def test_job_model_fields_override_the_preset_only_where_set(tmp_path):
    preset_dtype = yaml.safe_load((ROOT / "configs/models/llava-1.5-7b.yaml").read_text())["dtype"]
    values = raw_job()
    values["model"] = {"preset": "llava-1.5-7b"}
    assert load_job(write_job(tmp_path, values)).model_settings().dtype == preset_dtype
    values["model"]["dtype"] = "auto"  # explicit, even though it is the field's default
    assert load_job(write_job(tmp_path, values)).model_settings().dtype == "auto"


def test_tiny_preset_family_cannot_be_contradicted(tmp_path):
    values = raw_job()
    values["model"]["family"] = "qwen2_vl"
    assert spec_error(tmp_path, values).startswith("model.family:")


def test_local_model_path_becomes_absolute_and_hub_ids_stay(tmp_path, monkeypatch):
    (tmp_path / "checkpoint").mkdir()
    monkeypatch.chdir(tmp_path)
    local = load_job(CAPTIONS, ["model.name_or_path=checkpoint"]).model_settings()
    assert local.name_or_path == str(tmp_path / "checkpoint")
    hub = load_job(CAPTIONS, ["model.name_or_path=llava-hf/llava-1.5-7b-hf"]).model_settings()
    assert hub.name_or_path == "llava-hf/llava-1.5-7b-hf"


def test_resolved_dtype():
    settings = load_job(CAPTIONS).model_settings()
    assert settings.dtype == "auto"
    assert settings.resolved_dtype(cuda_available=True) == "bfloat16"
    assert settings.resolved_dtype(cuda_available=False) == "float32"
    fixed = load_job(CAPTIONS, ["model.dtype=float16"]).model_settings()
    assert fixed.resolved_dtype(cuda_available=False) == "float16"


def test_local_ray_options_need_a_local_ray():
    with pytest.raises(SpecError, match=r"^ray\.num_cpus:"):
        load_job(CAPTIONS, ["ray.address=auto", "ray.num_cpus=2"])


def test_output_must_differ_from_input():
    with pytest.raises(SpecError, match=r"^output\.path:"):
        load_job(CAPTIONS, ["output.path=data/sample/images.parquet"])


@pytest.mark.parametrize("override, path", [
    ("resources.gpus_per_worker=-1", "resources.gpus_per_worker"),
    ("resources.gpus_per_worker=many", "resources.gpus_per_worker"),
    ("generation.top_p=0", "generation.top_p"),
    ("generation.temperature=0", "generation.temperature"),
    ("input.limit=0", "input.limit"),
    ("model.dtype=float8", "model.dtype"),
    ("task.type=summary", "task.type"),
    ("output.rows_per_file=0", "output.rows_per_file"),
])
def test_out_of_range_values_name_the_field(override, path):
    with pytest.raises(SpecError) as caught:
        load_job(CAPTIONS, [override])
    assert str(caught.value).startswith(f"{path}:")


# ---------------------------------------------------------------- reading files


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="job file not found"):
        load_job(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ninput:\n  path: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad\.yaml:\d+:\d+: invalid YAML"):
        load_job(path)


def test_duplicate_keys_are_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(CAPTIONS.read_text() + "\nzipvl: dense\n")
    with pytest.raises(SpecError, match="duplicate key 'zipvl'"):
        load_job(path)


@pytest.mark.parametrize("text", ["", "- a\n- b\n"])
def test_empty_or_non_mapping_file(tmp_path, text):
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    with pytest.raises(SpecError):
        load_job(path)


def test_name_defaults_to_the_file_stem(tmp_path):
    values = raw_job()
    del values["name"]
    assert load_job(write_job(tmp_path, values, "nightly-run.yaml")).name == "nightly-run"


def test_spec_error_is_a_job_error():
    assert issubclass(SpecError, JobError)


# ---------------------------------------------------------------- --set overrides


def test_set_overrides_nested_fields_with_types():
    spec = load_job(CAPTIONS, [
        "resources.workers=2", "generation.do_sample=true", "generation.temperature=0.7",
        "name=2024", "ray.resources={gpu_slot: 2}", "zipvl.dense_layers=[0, 1]",
        "input.limit=5", "model.revision=null",
    ])
    assert spec.resources.workers == 2
    assert spec.generation.do_sample is True and spec.generation.temperature == 0.7
    assert spec.name == "2024"
    assert spec.ray.resources == {"gpu_slot": 2}
    assert spec.zipvl_config().dense_layers == (0, 1)
    assert spec.input.limit == 5


def test_set_creates_missing_sections(tmp_path):
    values = raw_job()
    del values["ray"]
    spec = load_job(write_job(tmp_path, values), ["ray.num_cpus=2"])
    assert spec.ray.num_cpus == 2


def test_set_keeps_prompt_text_verbatim():
    text = "What is #1: the sky, yes or no?"
    spec = load_job(CAPTIONS, [f"task.prompt={text}"])
    assert spec.task.prompt == text


def test_set_keeps_a_template_that_looks_like_yaml_as_text():
    vqa = CAPTIONS.parent / "vqa.yaml"
    for text in ("{question} Answer in one word.", "{question}", "[{question}]"):
        spec = load_job(vqa, [f"task.prompt={text}"])
        assert spec.task.prompt == text
    assert load_job(CAPTIONS, ["task.prompt=42"]).task.prompt == "42"


def test_set_gpus_per_worker_number_dumps_without_warnings():
    import warnings

    spec = load_job(CAPTIONS, ["resources.gpus_per_worker=0"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dumped = spec.report_dict()
    assert dumped["resources"]["gpus_per_worker"] == 0


def test_set_later_override_wins():
    assert load_job(CAPTIONS, ["resources.workers=2", "resources.workers=3"]).resources.workers == 3


def test_set_paths_local_and_s3(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_job(CAPTIONS, ["input.path=s3://b/x", "output.path=relative/out"])
    assert spec.input.path == "s3://b/x"
    assert spec.output.path == str(tmp_path / "relative" / "out")


@pytest.mark.parametrize("override, named", [
    ("resources.worker=2", "--set resources.worker: unknown key 'worker'"),
    ("bogus=1", "--set bogus: unknown key 'bogus'"),
    ("zipvl.taux=0.9", "--set zipvl.taux: unknown key 'taux'"),
    ("resources.workers.count=2", "--set resources.workers.count:"),
    ("input.path.more=x", "--set input.path.more:"),
    ("workers", "--set 'workers': expected KEY.PATH=VALUE"),
    ("=3", "expected KEY.PATH=VALUE"),
    ("resources..workers=3", "expected KEY.PATH=VALUE"),
])
def test_set_bad_paths_are_named(override, named):
    with pytest.raises(SpecError) as caught:
        load_job(CAPTIONS, [override])
    assert str(caught.value).startswith(named) or named.startswith("expected") and named in str(
        caught.value)


def test_set_bad_value_names_the_field():
    with pytest.raises(SpecError, match=r"^resources\.workers:"):
        load_job(CAPTIONS, ["resources.workers=two"])


def test_set_field_of_a_zipvl_preset_expands_it(tmp_path):
    paper = load_job(CAPTIONS, ["zipvl=paper"]).zipvl_config()
    tuned = load_job(CAPTIONS, ["zipvl=paper", "zipvl.tau=0.96"])
    assert tuned.zipvl_config() == dataclasses.replace(paper, tau=0.96)
    # The job as run records the expanded mapping, not the preset name.
    assert tuned.model_dump()["zipvl"]["tau"] == 0.96
    # Without a zipvl value in the file, the default preset is expanded.
    values = raw_job()
    del values["zipvl"]
    expanded = load_job(write_job(tmp_path, values), ["zipvl.tau=0.9"])
    assert expanded.zipvl_config() == ZipVLConfig(tau=0.9)


def test_a_selection_strategy_is_set_by_name_and_fields(tmp_path):
    from zipvl.strategies import FixedRatio, SinkAndRecent

    values = raw_job()
    values["zipvl"] = {"strategy": {"name": "fixed_ratio", "ratio": 0.3}, "tau": 0.9}
    spec = load_job(write_job(tmp_path, values))
    assert spec.zipvl_config() == ZipVLConfig(strategy=FixedRatio(0.3), tau=0.9)
    assert spec.model_dump()["zipvl"]["strategy"] == {"name": "fixed_ratio", "ratio": 0.3}
    streaming = load_job(CAPTIONS, ["zipvl.strategy={name: sink_and_recent, ratio: 0.5}"])
    assert streaming.zipvl_config().strategy == SinkAndRecent(0.5)


def test_set_zipvl_false_and_then_a_field():
    assert load_job(CAPTIONS, ["zipvl=false"]).zipvl_config() is None
    with pytest.raises(SpecError, match=r"^--set zipvl\.tau: zipvl is false"):
        load_job(CAPTIONS, ["zipvl=false", "zipvl.tau=0.9"])
    with pytest.raises(SpecError, match=r"^zipvl\.enabled:"):
        load_job(CAPTIONS, ["zipvl=dense", "zipvl.tau=0.9"])


def test_set_bad_tau_names_zipvl_tau():
    with pytest.raises(SpecError, match=r"^zipvl\.tau: must be in \(0, 1\], got 1\.5"):
        load_job(CAPTIONS, ["zipvl.tau=1.5"])


def test_set_model_source_replaces_the_other():
    spec = load_job(CAPTIONS, ["model.name_or_path=llava-hf/llava-1.5-7b-hf"])
    assert spec.model.preset is None
    assert spec.model_settings().name_or_path == "llava-hf/llava-1.5-7b-hf"
    back = load_job(CAPTIONS, ["model.name_or_path=x/y", "model.preset=tiny-qwen2-vl"])
    assert back.model_settings().tiny == "qwen2_vl"


def test_set_does_not_touch_the_file():
    before = CAPTIONS.read_text()
    load_job(CAPTIONS, ["resources.workers=2", "zipvl.tau=0.9"])
    assert CAPTIONS.read_text() == before


@given(st.integers(min_value=-10**12, max_value=10**12))
def test_override_integers_round_trip(number):
    assert parse_override_value(str(number)) == number


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_override_floats_round_trip(number):
    assert parse_override_value(repr(number)) == number


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1)
       .filter(lambda s: s.strip() and s.strip()[0] not in "[{'\"-+.0123456789~"
               and s.strip().lower() not in ("null", "true", "false")))
def test_override_plain_text_is_kept_verbatim(text):
    assert parse_override_value(text) == text


@pytest.mark.parametrize("text, value", [
    ("", None), ("null", None), ("~", None), ("true", True), ("False", False),
    ("'007'", "007"), ('"true"', "true"), ("yes", "yes"), ("007", "007"), ("1e-3", 0.001),
])
def test_override_scalars(text, value):
    assert parse_override_value(text) == value


# ---------------------------------------------------------------- report and secrets

SECRETS = {"access_key": "AKIAEXAMPLEKEY123", "secret_key": "wJalrXUtnFEMIsecretEXAMPLE",
           "session_token": "FwoGZXIvYXdzEXAMPLETOKEN"}


def spec_with_secrets(tmp_path) -> JobSpec:
    values = raw_job(ROOT / "jobs" / "captions-s3.yaml")
    values["input"]["storage_options"] = {**SECRETS, "endpoint_url": "http://127.0.0.1:8333"}
    values["output"]["storage_options"] = {
        "endpoint_url": "http://admin:hunter2pass@127.0.0.1:8333", "region": "us-east-1"}
    return load_job(write_job(tmp_path, values))


def test_credentials_are_redacted_in_the_report(tmp_path):
    spec = spec_with_secrets(tmp_path)
    texts = [json.dumps(spec.model_dump()), json.dumps(spec.model_dump(mode="json")),
             json.dumps(spec.report_dict()), repr(spec), str(spec), spec.model_dump_json()]
    for text in texts:
        for secret in [*SECRETS.values(), "hunter2pass"]:
            assert secret not in text
    dumped = spec.model_dump()
    assert dumped["input"]["storage_options"]["endpoint_url"] == "http://127.0.0.1:8333"
    assert dumped["output"]["storage_options"]["region"] == "us-east-1"
    assert set(dumped["input"]["storage_options"]) == {*SECRETS, "endpoint_url"}


def test_live_credentials_stay_for_the_storage_layer(tmp_path):
    spec = spec_with_secrets(tmp_path)
    for name, value in SECRETS.items():
        assert spec.input.storage_options[name] == value
    assert set(spec.secret_values()) >= {*SECRETS.values(), "hunter2pass"}


def test_bad_storage_option_value_is_not_echoed(tmp_path):
    values = raw_job()
    values["input"]["storage_options"] = {"access_key": "AKIAONLYHALF"}
    message = spec_error(tmp_path, values)
    assert message.startswith("input.storage_options")
    assert "AKIAONLYHALF" not in message


def test_report_dict_has_the_resolved_settings():
    spec = load_job(CAPTIONS, ["zipvl=paper"])
    report = spec.report_dict()
    assert report["zipvl"] == "paper"
    assert report["resolved"]["zipvl"] == spec.zipvl_config().to_dict()
    assert report["resolved"]["model"]["tiny"] == spec.model_settings().tiny
    json.dumps(report)  # plain JSON types only
    assert load_job(CAPTIONS, ["zipvl=false"]).method_label() == "dense"
    assert json.loads(spec.method_label()) == spec.zipvl_config().to_dict()


def test_dump_validates_back_to_the_same_spec():
    spec = load_job(CAPTIONS, ["zipvl=paper", "zipvl.tau=0.96", "resources.workers=2"])
    again = parse_job(copy.deepcopy(spec.model_dump()))
    assert again == spec
    assert again.zipvl_config() == spec.zipvl_config()
    assert again.model_settings() == spec.model_settings()


def test_spec_survives_pickling_for_ray_workers():
    spec = load_job(CAPTIONS, ["zipvl=paper"])
    copied = pickle.loads(pickle.dumps(spec))
    assert copied == spec
    assert copied.zipvl_config() == spec.zipvl_config()
    assert copied.model_settings() == spec.model_settings()


def test_spec_is_frozen():
    spec = load_job(CAPTIONS)
    with pytest.raises(ValueError):
        spec.resources.workers = 8
