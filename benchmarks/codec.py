"""Codec round trip of the per-epoch training-signals message, side by side with raw msgpack.

Alternates the two in one run (this machine is shared and noisy) and prints the
medians; the last line is JSON:
``{"roundtrip_us_median": ..., "raw_msgpack_us_median": ..., "ratio": ...}``.
Target: Leyline round trip <= 20 us median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import msgpack

from esper.leyline import Envelope, SeedStage, SeedStateReport, TrainingSignals, decode, encode


def training_signals() -> TrainingSignals:
    """A realistic per-epoch message with three slot reports."""
    stages = [SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.DORMANT]
    return TrainingSignals(
        epoch=42,
        step=1512,
        train_loss=0.4213,
        val_loss=0.4871,
        train_accuracy=0.861,
        val_accuracy=0.842,
        loss_delta=-0.0123,
        accuracy_delta=0.004,
        plateau_epochs=2,
        best_val_loss=0.4801,
        best_val_accuracy=0.8455,
        learning_rate=0.00731,
        params_total=2514,
        epoch_seconds=0.83,
        seeds=[
            SeedStateReport(
                slot_id=f"s{i + 1}",
                stage=stage,
                seed_id=f"seed-{i}" if stage is not SeedStage.DORMANT else None,
                blueprint="conv_heavy" if stage is not SeedStage.DORMANT else None,
                alpha=0.4 if stage is SeedStage.BLENDING else 0.0,
                epochs_in_stage=3 + i,
                params=1656 if stage is not SeedStage.DORMANT else 0,
                improvement=0.031,
                contribution=0.012,
                contribution_loss=0.02,
                seed_grad_norm=0.41,
                host_grad_norm=1.3,
            )
            for i, stage in enumerate(stages)
        ],
    )


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20_000)
    args = parser.parse_args()

    envelope = Envelope(payload=training_signals(), run_id="bench-run")
    data = encode(envelope)
    assert decode(data) == envelope, "round trip changed the message"
    raw = msgpack.unpackb(data)  # the equivalent plain dict

    esper_t: list[float] = []
    raw_t: list[float] = []
    clock = time.perf_counter
    for _ in range(args.repeats):
        t0 = clock()
        decode(encode(envelope))
        t1 = clock()
        msgpack.unpackb(msgpack.packb(raw))
        t2 = clock()
        esper_t.append(t1 - t0)
        raw_t.append(t2 - t1)

    result = {
        "roundtrip_us_median": round(median_us(esper_t), 2),
        "raw_msgpack_us_median": round(median_us(raw_t), 2),
        "ratio": round(statistics.median(esper_t) / statistics.median(raw_t), 3),
    }
    print(
        f"Leyline encode+decode of training_signals ({len(data)} bytes, 3 slot reports), "
        f"{args.repeats} repeats alternating with raw msgpack.packb/unpackb of the same dict",
        file=sys.stderr,
    )
    print(
        f"target: roundtrip_us_median <= 20 -> {'met' if result['roundtrip_us_median'] <= 20 else 'NOT met'}",
        file=sys.stderr,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
