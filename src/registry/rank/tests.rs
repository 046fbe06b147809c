//! Unit and property tests of `rank`.

use super::*;
