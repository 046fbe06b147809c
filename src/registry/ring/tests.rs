//! Unit and property tests of `ring`.

use super::*;
