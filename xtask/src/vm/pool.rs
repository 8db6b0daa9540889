//! Runs jobs side by side on a fixed number of threads, taking them in order, and returns their
//! results in the order of the jobs whatever order they finished in.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    thread,
};

/// `f(0)`, ..., `f(n - 1)`, at most `width` at a time, started in index order; results by index.
pub(super) fn map<T: Send>(n: usize, width: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    thread::scope(|scope| {
        for _ in 0..width.clamp(1, n.max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = f(i);
                done.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    done.into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every index ran"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::AtomicUsize,
        time::{Duration, Instant},
    };

    use super::*;

    #[test]
    fn keeps_the_order_and_the_width() {
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let out = map(6, 3, |i| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            // The first jobs wait (bounded) until three run at once: the width is reached.
            let t = Instant::now();
            while most.load(Ordering::SeqCst) < 3 && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(1));
            }
            // Later jobs finish first: the results still come in job order.
            std::thread::sleep(Duration::from_millis(5 * (6 - i as u64)));
            running.fetch_sub(1, Ordering::SeqCst);
            i * 10
        });
        assert_eq!(out, [0, 10, 20, 30, 40, 50]);
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert_eq!(map(0, 4, |i| i), Vec::<usize>::new());
        assert_eq!(map(2, 0, |i| i), [0, 1]);
    }
}
