"""Per-version impressions, clicks and CTR, the sliding window, and the auto-rollback rule."""

import threading

import pytest

from covisit.core.feedback_stats import VersionFeedback, VersionStats, WindowStats, auto_rollback_reason


def test_totals_and_click_attribution():
    fb = VersionFeedback()
    fb.impression("r1", 1, 10)
    fb.impression("r2", 2, 5)
    assert fb.click("r1", 2) == 1  # the impression's version wins over the one passed
    assert fb.click("r2") == 2
    assert fb.click("r2") == 2
    assert fb.click("nobody") is None  # no impression, no version: nothing counted
    assert fb.stats(1) == VersionStats(1, 10, 1, WindowStats(1, 10, 1))
    assert fb.stats(2).ctr == pytest.approx(2 / 5) and fb.stats(2).window.ctr == pytest.approx(2 / 5)
    assert fb.stats(7) == VersionStats(7, 0, 0, WindowStats(7, 0, 0)) and fb.stats(7).ctr == 0.0


def test_a_click_before_its_impression_counts_and_later_joins_the_window():
    fb = VersionFeedback()
    assert fb.click("r", 3) == 3
    assert fb.stats(3) == VersionStats(3, 0, 1, WindowStats(3, 0, 0))
    fb.impression("r", 3, 4)
    assert fb.stats(3) == VersionStats(3, 4, 1, WindowStats(3, 4, 1))
    fb.impression("r", 3, 2)  # more items of the same request add up
    assert fb.stats(3) == VersionStats(3, 6, 1, WindowStats(3, 6, 1))


def test_the_window_slides_over_the_newest_impressions():
    fb = VersionFeedback(window=1000)
    for r in range(100):  # 1000 impressions, the first 50 requests clicked
        fb.impression(f"r{r}", 1, 10)
        if r < 50:
            fb.click(f"r{r}")
    assert fb.stats(1).window == WindowStats(1, 1000, 50)
    for r in range(100, 130):
        fb.impression(f"r{r}", 1, 10)
    assert fb.stats(1).window == WindowStats(1, 1000, 20)  # r30..r129: r30..r49 clicked
    assert (fb.stats(1).impressions, fb.stats(1).clicks) == (1300, 50)
    fb.impression("big", 1, 995)  # the window keeps whole requests, at least 1000 impressions
    assert fb.stats(1).window == WindowStats(1, 1005, 0)
    assert fb.click("r0") is None  # out of the window and no version given
    assert fb.click("r0", 1) == 1  # still counted from the response's version
    assert fb.stats(1).clicks == 51 and fb.stats(1).window.clicks == 0


def test_memory_is_bounded_in_versions_requests_and_early_clicks():
    fb = VersionFeedback(window=10, max_versions=3)
    for version in range(1, 6):
        for r in range(100):
            fb.impression(f"v{version}r{r}", version, 1)
    fb.impression("v3r99", 3, 1)  # v3 is active again, so v4 is now the least recently active
    fb.impression("new", 6, 1)
    assert fb.versions() == [5, 3, 6]
    assert fb.stats(1) == VersionStats(1, 0, 0, WindowStats(1, 0, 0))
    assert fb.click("v4r99") is None  # forgotten with its version
    assert len(fb._request_version) <= 3 * 10  # the bound itself (private: no API needs it)
    for r in range(100):
        fb.click(f"early{r}", 6)
    assert len(fb._early) == 10
    assert fb.stats(6).clicks == 100


def test_counts_add_up_under_concurrency():
    fb = VersionFeedback(window=100_000)

    def work(t):
        for r in range(500):
            fb.impression(f"{t}-{r}", t % 2, 2)
            fb.click(f"{t}-{r}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for version in (0, 1):
        assert fb.stats(version) == VersionStats(version, 4000, 2000, WindowStats(version, 4000, 2000))


def test_auto_rollback_fires_past_the_drop_only_with_full_windows():
    previous = WindowStats(6, 1000, 50)  # CTR 0.05
    reason = auto_rollback_reason(WindowStats(7, 1000, 39), previous, window=1000, max_drop=0.2)
    assert reason == ("window CTR of version 7 0.0390 (39/1000) vs version 6 0.0500 (50/1000): "
                      "22.0% lower, limit 20%")
    assert auto_rollback_reason(WindowStats(7, 1000, 40), previous, 1000, 0.2) is None  # exactly 20%
    assert auto_rollback_reason(WindowStats(7, 999, 0), previous, 1000, 0.2) is None  # not full
    assert auto_rollback_reason(WindowStats(7, 1000, 0), WindowStats(6, 999, 50), 1000, 0.2) is None
    assert auto_rollback_reason(WindowStats(7, 1000, 0), WindowStats(6, 1000, 0), 1000, 0.2) is None
