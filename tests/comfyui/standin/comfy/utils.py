"""comfy.utils.ProgressBar as ComfyUI defines it, its hook recording every update."""

updates: list[tuple[int, int]] = []  # (value, total) in the order the bar heard them
PROGRESS_BAR_HOOK = None


def _record(value, total, preview, node_id=None):
    updates.append((value, total))


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total = total
        self.current = 0
        self.hook = PROGRESS_BAR_HOOK or _record
        self.node_id = node_id

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        value = min(value, self.total)
        self.current = value
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value):
        self.update_absolute(self.current + value)
