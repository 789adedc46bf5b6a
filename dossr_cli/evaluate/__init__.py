"""Measuring results the way the field does: `dossr eval` and benchmarks/paper_table.py use this."""

from dossr_cli.evaluate.fullref import PairError, psnr_ssim_y
from dossr_cli.evaluate.learned import LearnedMetrics, Unavailable
from dossr_cli.evaluate.pairs import Evaluation, Row, evaluate, list_images

__all__ = ["Evaluation", "LearnedMetrics", "PairError", "Row", "Unavailable", "evaluate", "list_images",
           "psnr_ssim_y"]
