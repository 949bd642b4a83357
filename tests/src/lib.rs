//! Placeholder lib so the crate builds; the suite lives in suite/.
