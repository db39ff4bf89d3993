"""Every conversion between the core's records and the protobuf messages (protos/pirm/v1), in
one place for the services, the client library and the tools. Enum maps read the messages'
zero (UNSPECIFIED) value as the documented default."""

from __future__ import annotations

from pirm.v1 import common_pb2, inference_pb2, metrics_pb2, scorer_pb2

from services.core.errors import InvalidArgument
from services.core.jobs import JobState
from services.core.quality import Channel, Flavor, NegativePolicy, QualityOptions, SmallPolicy
from services.core.timing import (
    FIXED,
    SEQUENTIAL,
    DeviceTiming,
    Stopping,
    Timing,
    TimingCheck,
    TimingOptions,
    TimingProbe,
)
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


_PROTOCOLS = {inference_pb2.TIMING_PROTOCOL_UNSPECIFIED: SEQUENTIAL,
              inference_pb2.TIMING_PROTOCOL_SEQUENTIAL: SEQUENTIAL,
              inference_pb2.TIMING_PROTOCOL_FIXED: FIXED}
_PROTOCOL_MESSAGES = {SEQUENTIAL: inference_pb2.TIMING_PROTOCOL_SEQUENTIAL,
                      FIXED: inference_pb2.TIMING_PROTOCOL_FIXED}


def timing_options(message: inference_pb2.TimingOptions) -> TimingOptions:
    """Unset fields keep the service defaults; an explicit 0 is 0."""
    d, m = TimingOptions(), message
    if m.protocol not in _PROTOCOLS:
        raise InvalidArgument(f"unknown timing protocol {m.protocol}; use SEQUENTIAL or FIXED")
    min_runs = m.min_runs if m.HasField("min_runs") else d.min_runs
    return TimingOptions(
        warmup_runs=m.warmup_runs if m.HasField("warmup_runs") else d.warmup_runs,
        min_runs=min_runs,
        min_seconds=m.min_seconds if m.HasField("min_seconds") else d.min_seconds,
        max_runs=m.max_runs if m.HasField("max_runs") else max(d.max_runs, min_runs),
        protocol=_PROTOCOLS[m.protocol],
        ratio_width=m.ratio_width if m.HasField("ratio_width") else d.ratio_width,
        min_pairs=m.min_pairs if m.HasField("min_pairs") else d.min_pairs,
        max_seconds=m.max_seconds if m.HasField("max_seconds") else d.max_seconds,
    )


def timing_options_message(options: TimingOptions) -> inference_pb2.TimingOptions:
    return inference_pb2.TimingOptions(
        warmup_runs=options.warmup_runs, min_runs=options.min_runs,
        min_seconds=options.min_seconds, max_runs=options.max_runs,
        protocol=_PROTOCOL_MESSAGES[options.protocol], ratio_width=options.ratio_width,
        min_pairs=options.min_pairs, max_seconds=options.max_seconds)


def stopping_to_proto(stopping: Stopping) -> common_pb2.TimingStopping:
    return common_pb2.TimingStopping(
        protocol=stopping.protocol, pairs=stopping.pairs,
        solution_block=stopping.solution_block, baseline_block=stopping.baseline_block,
        width=stopping.width, reason=stopping.reason, reused=list(stopping.reused))


def stopping_from_proto(message: common_pb2.TimingStopping) -> Stopping:
    return Stopping(
        protocol=message.protocol, pairs=message.pairs,
        solution_block=message.solution_block or 1, baseline_block=message.baseline_block or 1,
        width=message.width, reason=message.reason, reused=tuple(message.reused))


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
