//! The VP8 test pattern encodes on one thread of its own and nothing more: libvpx's
//! multi-threaded VP8 encoder corrupted the heap of busy processes (the C API media test
//! aborted in glibc's allocator in most runs with several copies of it running at once). Its
//! worker threads are created by the encoding thread and inherit its name, so they are counted
//! here by name. A process of its own, so no other test's encoders are counted.
//!
//! On a one-core machine libvpx starts no workers whatever it is asked, so there this test
//! cannot tell the difference; CI machines have more.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use callplus_media::{MediaSource, TestPatternSource, VideoConfig};

/// Threads of this process named like the test pattern's encoder thread.
fn encoder_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "vp8-pattern")
        .count()
}

#[tokio::test(flavor = "current_thread")]
async fn the_test_pattern_encodes_on_a_single_thread() {
    assert_eq!(encoder_threads(), 0);
    let mut camera = TestPatternSource::new(VideoConfig::default()).unwrap();
    for round in 0..3 {
        // A key frame on request too (it once meant a new encoder, and new workers).
        camera.request_keyframe();
        for _ in 0..3 {
            let sample = camera.next_sample().await.expect("a frame");
            assert!(!sample.data.is_empty());
        }
        assert_eq!(encoder_threads(), 1, "round {round}: threads encoding VP8");
    }
    drop(camera);
}
