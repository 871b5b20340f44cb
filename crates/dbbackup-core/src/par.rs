//! Running one fallible job per item on a few threads: what backup,
//! restore and sync share. Stops handing out items at the first error and
//! returns it; never spawns more threads than asked.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Calls `f` on every item, `jobs` threads at a time, in order of the
/// slice (each thread takes the next free item). Returns the first error.
pub fn try_for_each<T: Sync>(items: &[T], jobs: usize, f: impl Fn(&T) -> Result<()> + Sync) -> Result<()> {
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                while !abort.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    if let Err(e) = f(item) {
                        abort.store(true, Ordering::Relaxed);
                        first_err.lock().expect("not poisoned").get_or_insert(e);
                    }
                }
            });
        }
    });
    match first_err.into_inner().expect("threads joined") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_once_and_the_first_error_stops_the_rest() {
        let seen = Mutex::new(Vec::new());
        try_for_each(&(0..100).collect::<Vec<_>>(), 3, |i| {
            seen.lock().unwrap().push(*i);
            Ok(())
        })
        .unwrap();
        let mut v = seen.into_inner().unwrap();
        v.sort();
        assert_eq!(v, (0..100).collect::<Vec<_>>());

        let done = AtomicUsize::new(0);
        let e = try_for_each(&(0..1000).collect::<Vec<_>>(), 2, |i| {
            done.fetch_add(1, Ordering::Relaxed);
            if *i == 5 {
                return Err(Error::io("boom"));
            }
            Ok(())
        })
        .unwrap_err();
        assert_eq!(e.message(), "boom");
        assert!(done.load(Ordering::Relaxed) < 1000);
        try_for_each(&Vec::<u8>::new(), 4, |_| Ok(())).unwrap();
    }
}
