"""Table II, Fig. 9(a) and Fig. 10: six KD methods with the feature mask on paired digits.

On MNIST / MNIST-M (``--dataset mnist_m``, the paper's; ``--set dataset.source=t10k`` builds
it from MNIST's 10,000 test digits when the training images are absent) or the offline
scikit-learn digits (``--dataset digits``). Grid, table, figures and verdicts are
:class:`experiments.method_table.MethodTable`'s; results go to ``results/table2/`` (MNIST-M)
or ``results/table2_digits/``.

    python experiments/table2.py                                 # MNIST / MNIST-M (make table2)
    python experiments/table2.py --dataset digits --workers 2    # offline
    python experiments/table2.py --dataset digits --quick --seeds 2 --methods dkd sp --ratios 0.25
"""

from __future__ import annotations

from typing import ClassVar

from experiments.method_table import MethodTable


class Table2(MethodTable):
    """Table II: FitNet, CRD, RKD, PKT, SP and DKD on MNIST / MNIST-M, masked and not."""

    paper_name = "table2"
    section = "table2"
    paper_table = "Table II"
    description = __doc__
    paper_dataset = "mnist_m"
    datasets: ClassVar[tuple[str, ...]] = ("mnist_m", "digits")
    data_labels: ClassVar[dict[str, str]] = {
        "mnist_m": "MNIST / MNIST-M",
        "digits": "sklearn digits / digits blended over photos (not MNIST)",
    }
    ratio_figure = ("fig9a", "Fig. 9(a)")
    input_heatmaps = True


if __name__ == "__main__":
    Table2.main()
