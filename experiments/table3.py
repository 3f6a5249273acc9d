"""Table III and Fig. 9(b): six KD methods with the feature mask on RAVDESS (audio -> video).

The teacher hears the utterance (log-mel spectrogram), the student sees the face (frames);
both are the released code's 2D CNN. The feature mask acts on the 128-unit hidden layer
(``fc.1``, the released code's site) of the Eq. 26-trained network it was scored on, which is
then the teacher. Grid, table, figure and verdicts are
:class:`experiments.method_table.MethodTable`'s; settings are the ``table3`` section of
``experiments/configs/ravdess.yaml``; results go to ``results/table3/``.

    python experiments/table3.py --gpus 4                      # make table3 ARGS="--gpus 4"
    python experiments/table3.py --quick --seeds 2 --methods dkd sp --ratios 0.5
"""

from __future__ import annotations

from typing import ClassVar

from experiments.method_table import MethodTable


class Table3(MethodTable):
    """Table III: FitNet, CRD, RKD, PKT, SP and DKD on RAVDESS, masked and not."""

    paper_name = "table3"
    section = "table3"
    paper_table = "Table III"
    description = __doc__
    paper_dataset = "ravdess"
    datasets: ClassVar[tuple[str, ...]] = ("ravdess",)
    data_labels: ClassVar[dict[str, str]] = {"ravdess": "RAVDESS, audio teaches video"}
    ratio_figure = ("fig9b", "Fig. 9(b)")
    input_heatmaps = False  # no 28x28 input to draw the masks on
    num_classes = 8  # RAVDESS's emotions


if __name__ == "__main__":
    Table3.main()
