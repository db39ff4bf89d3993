"""Every conversion between the core's records and the protobuf messages (protos/pirm/v1), in
one place for the services, the client library and the tools. Enum maps read the messages'
zero (UNSPECIFIED) value as the documented default."""

from __future__ import annotations

from pirm.v1 import common_pb2, inference_pb2, metrics_pb2, scorer_pb2

from services.core.errors import InvalidArgument
from services.core.jobs import JobState
from services.core.quality import Channel, Flavor, NegativePolicy, QualityOptions, SmallPolicy
from services.core.timing import DeviceTiming, Timing, TimingCheck, TimingOptions, TimingProbe
from services.core.track import EntryPolicy, Phase, Track

# -- tracks, phases, leaderboards, job states ------------------------------------------------

TRACKS: dict[common_pb2.Track.ValueType, Track] = {
    common_pb2.TRACK_A: Track.A, common_pb2.TRACK_B: Track.B
}
TRACK_MESSAGES = {v: k for k, v in TRACKS.items()}
PHASES: dict[common_pb2.Phase.ValueType, Phase] = {
    common_pb2.PHASE_UNSPECIFIED: Phase.VALIDATION,
    common_pb2.PHASE_VALIDATION: Phase.VALIDATION,
    common_pb2.PHASE_FINAL: Phase.FINAL,
}
PHASE_MESSAGES = {Phase.VALIDATION: common_pb2.PHASE_VALIDATION,
                  Phase.FINAL: common_pb2.PHASE_FINAL}
RANK_BY = {scorer_pb2.RANK_BY_UNSPECIFIED: "a", scorer_pb2.RANK_BY_SCORE_A: "a",
           scorer_pb2.RANK_BY_SCORE_B: "b", scorer_pb2.RANK_BY_SCORE_C: "c"}
RANK_BY_MESSAGES = {"a": scorer_pb2.RANK_BY_SCORE_A, "b": scorer_pb2.RANK_BY_SCORE_B,
                    "c": scorer_pb2.RANK_BY_SCORE_C}
ENTRY_POLICIES = {
    scorer_pb2.ENTRY_POLICY_UNSPECIFIED: EntryPolicy.BEST,
    scorer_pb2.ENTRY_POLICY_BEST: EntryPolicy.BEST,
    scorer_pb2.ENTRY_POLICY_LATEST: EntryPolicy.LATEST,
}
ENTRY_POLICY_MESSAGES = {EntryPolicy.BEST: scorer_pb2.ENTRY_POLICY_BEST,
                         EntryPolicy.LATEST: scorer_pb2.ENTRY_POLICY_LATEST}
STATES = {state: scorer_pb2.JobState.Value(f"JOB_STATE_{state.value}") for state in JobState}


def track_of(message: common_pb2.Track.ValueType) -> Track:
    if message not in TRACKS:
        raise InvalidArgument("choose track A (super-resolution) or B (enhancement)")
    return TRACKS[message]


# -- timing ------------------------------------------------------------------------------------

_TIMING_FIELDS = tuple(Timing.__dataclass_fields__)


def check_to_proto(check: TimingCheck) -> common_pb2.TimingCheck:
    return common_pb2.TimingCheck(
        checked=check.checked, failure=check.failure, timed_ms=check.timed_ms,
        consistency_db=check.consistency_db,
        probes=[common_pb2.TimingProbe(name=p.name, shape=list(p.shape), median_ms=p.median_ms,
                                       expected_ms=p.expected_ms) for p in check.probes])


def check_from_proto(message: common_pb2.TimingCheck) -> TimingCheck:
    return TimingCheck(
        checked=message.checked, failure=message.failure, timed_ms=message.timed_ms,
        consistency_db=message.consistency_db,
        probes=tuple(TimingProbe(p.name, tuple(p.shape), p.median_ms, p.expected_ms)
                     for p in message.probes))


def timing_to_proto(measured: DeviceTiming) -> common_pb2.Timing:
    t = measured.timing
    return common_pb2.Timing(
        **{name: getattr(t, name) for name in _TIMING_FIELDS},
        device=measured.device,
        intra_op_threads=measured.intra_op_threads,
        inter_op_threads=measured.inter_op_threads,
        node=measured.node,
        input_shape=list(measured.input_shape),
        peak_memory_mb=measured.peak_memory_mb,
        check=check_to_proto(measured.check),
    )


def timing_from_proto(message: common_pb2.Timing) -> DeviceTiming:
    return DeviceTiming(
        timing=Timing(**{name: getattr(message, name) for name in _TIMING_FIELDS}),
        device=message.device,
        intra_op_threads=message.intra_op_threads,
        inter_op_threads=message.inter_op_threads,
        node=message.node,
        input_shape=tuple(message.input_shape),
        peak_memory_mb=message.peak_memory_mb,
        check=check_from_proto(message.check),
    )


def timing_options(message: inference_pb2.TimingOptions) -> TimingOptions:
    """Zero fields keep the service defaults."""
    defaults = TimingOptions()
    return TimingOptions(
        warmup_runs=message.warmup_runs or defaults.warmup_runs,
        min_runs=message.min_runs or defaults.min_runs,
        min_seconds=message.min_seconds or defaults.min_seconds,
        max_runs=message.max_runs or max(defaults.max_runs, message.min_runs),
    )


def timing_options_message(options: TimingOptions) -> inference_pb2.TimingOptions:
    return inference_pb2.TimingOptions(
        warmup_runs=options.warmup_runs, min_runs=options.min_runs,
        min_seconds=options.min_seconds, max_runs=options.max_runs)


# -- quality -----------------------------------------------------------------------------------

_FLAVORS = {
    metrics_pb2.MSSSIM_FLAVOR_UNSPECIFIED: Flavor.TF,
    metrics_pb2.MSSSIM_FLAVOR_TF: Flavor.TF,
    metrics_pb2.MSSSIM_FLAVOR_NUMPY: Flavor.NUMPY,
}
FLAVOR_MESSAGES = {Flavor.TF: metrics_pb2.MSSSIM_FLAVOR_TF,
                   Flavor.NUMPY: metrics_pb2.MSSSIM_FLAVOR_NUMPY}
_CHANNELS = {metrics_pb2.CHANNEL_UNSPECIFIED: Channel.RGB, metrics_pb2.CHANNEL_RGB: Channel.RGB,
             metrics_pb2.CHANNEL_Y: Channel.Y}
_NEGATIVE = {metrics_pb2.NEGATIVE_POLICY_UNSPECIFIED: None,
             metrics_pb2.NEGATIVE_POLICY_RELU: NegativePolicy.RELU,
             metrics_pb2.NEGATIVE_POLICY_NAN: NegativePolicy.NAN,
             metrics_pb2.NEGATIVE_POLICY_ERROR: NegativePolicy.ERROR}
_SMALL = {metrics_pb2.SMALL_POLICY_UNSPECIFIED: None,
          metrics_pb2.SMALL_POLICY_ERROR: SmallPolicy.ERROR,
          metrics_pb2.SMALL_POLICY_SHRINK_WINDOW: SmallPolicy.SHRINK_WINDOW}


def quality_options(message: metrics_pb2.QualityOptions) -> QualityOptions:
    return QualityOptions(
        crop_border=message.crop_border,
        clip_psnr_input=message.clip_psnr_input,
        clip_msssim_input=message.clip_msssim_input,
        flavor=_FLAVORS.get(message.msssim_flavor, Flavor.TF),
        channel=_CHANNELS.get(message.channel, Channel.RGB),
        negative=_NEGATIVE.get(message.negative_contrast),
        small=_SMALL.get(message.small_images),
        tf_compat=message.tf_compat,
        with_ssim=message.with_ssim,
    )


def quality_options_message(options: QualityOptions) -> metrics_pb2.QualityOptions:
    """The message of the options a track's protocol uses (crop, clips, flavour)."""
    return metrics_pb2.QualityOptions(
        crop_border=options.crop_border,
        clip_psnr_input=options.clip_psnr_input,
        clip_msssim_input=options.clip_msssim_input,
        msssim_flavor=FLAVOR_MESSAGES[options.flavor],
    )
