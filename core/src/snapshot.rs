//! [`Snapshot`]: a value many readers share and one reloader swaps whole (the sources, the routing catalog).

use std::sync::{Arc, RwLock};

/// The current version of a value: readers take an `Arc` of it (a pointer copy under a read lock, never held
/// across work), a reload builds a new value and swaps it in whole, so a reader sees one version or the next.
#[derive(Debug, Default)]
pub struct Snapshot<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Snapshot<T> {
    pub fn new(value: T) -> Self {
        Self { current: RwLock::new(Arc::new(value)) }
    }

    /// The current version.
    pub fn get(&self) -> Arc<T> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes `value` the current version.
    pub fn replace(&self, value: T) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_keeps_the_version_it_took_while_a_reload_swaps_in_the_next() {
        let snapshot = Snapshot::new(vec![1]);
        let taken = snapshot.get();
        snapshot.replace(vec![2, 3]);
        assert_eq!(*taken, [1]);
        assert_eq!(*snapshot.get(), [2, 3]);
    }
}
