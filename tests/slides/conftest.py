from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from hestkit.synthetic.slides import make_slide_cohort


@pytest.fixture(scope="session")
def slide_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """Six small synthetic WSIs (1024 px, 0.5 um/px; labels ``label`` and ``score``), two
    slides per patient; their ``slides.csv``."""
    root = tmp_path_factory.mktemp("slidecohort")
    df = make_slide_cohort(root / "raw", n_slides=6, size_px=1024, seed=3, slides_per_patient=2)
    return root / "raw" / "slides.csv", df
