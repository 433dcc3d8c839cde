"""Every deepkit callback survives keras.saving's serialize / deserialize with
the same config (Keras' Callback base class has no `from_config`)."""

import json

import keras
import pytest

from deepkit.callbacks import (AnnealOnPlateau, ExactBackupAndRestore, ExpertLoad,
                               MomentumSchedule, ResetStates, RichProgressBar, StopAtTarget,
                               StopOnNaN, TimeLimit)


def _instances(tmp_path):
    return [
        AnnealOnPlateau("val_frame_nll", patience=4, min_lr=0.01),
        ExactBackupAndRestore(str(tmp_path / "ckpt"), seed=5, delete_checkpoint=True),
        ExpertLoad(path=str(tmp_path / "load.csv"), chart=False),
        MomentumSchedule(0.5, 0.7, 250, start_epoch=1),
        ResetStates(),
        RichProgressBar(batch_size=32),
        StopAtTarget("val_loss", 0.25),
        StopOnNaN(),
        TimeLimit(12.5),
    ]


@pytest.mark.parametrize("index", range(9))
def test_serialize_deserialize_round_trip(tmp_path, index):
    callback = _instances(tmp_path)[index]
    serialized = keras.saving.serialize_keras_object(callback)
    assert serialized["registered_name"] == f"deepkit>{type(callback).__name__}"
    revived = keras.saving.deserialize_keras_object(json.loads(json.dumps(serialized)))
    assert type(revived) is type(callback)
    assert revived.get_config() == callback.get_config()
