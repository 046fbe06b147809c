//! Unit and property tests of `table`.

use super::*;
