"""Conversions of domain records that more than one service sends or receives."""

from __future__ import annotations

from pirm.v1 import common_pb2

from services.inference.timing import DeviceTiming, Timing, TimingCheck, TimingProbe

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
