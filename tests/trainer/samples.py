"""Sample values shared by the tests of the progress line and of the Prometheus metrics."""

# One logging iteration's values, as the training loop hands them to both.
PROGRESS_UPDATE = dict(
    epoch=2,
    iteration=340,
    total_iterations=1000,
    images_per_second=4.2,
    losses={"total": 1.234, "cls": 0.3, "mask": 0.934},
    lr=0.01,
    data_wait=0.01,
    step_time=0.47,
    eta_seconds=312.4,
)
