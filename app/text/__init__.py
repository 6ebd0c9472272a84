"""What the pages say in words, pure (no Streamlit): ``story`` (one sentence per page, computed from the
data it draws) and ``tables`` (human column names, numbers at a sensible precision)."""
