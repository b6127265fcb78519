//! The states a delivery and a destination can be in, typed, with the text PostgreSQL stores for each.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a delivery stands. `pending` is the only state the delivery engine works on; the others are final until
/// an operator retries (`dead`, `failed`) or replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt (leased while one is in flight).
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Its attempts ran out, or it can never be attempted (its event is gone); the reason is in `last_error`.
    Dead,
    /// A route program failed on it; the reason is in `last_error`.
    Failed,
    /// The route's filter declined it at delivery, or an operator cancelled it.
    Cancelled,
}

impl DeliveryState {
    pub const ALL: [Self; 5] = [Self::Pending, Self::Delivered, Self::Dead, Self::Failed, Self::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The state stored as `s`; `None` for text that names no state.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a destination's deliveries are attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DestinationState {
    /// Deliveries are attempted.
    #[default]
    Active,
    /// Deliveries wait (an operator paused it).
    Paused,
    /// Deliveries wait (410 Gone, continuous failure, or an operator).
    Disabled,
}

impl DestinationState {
    pub const ALL: [Self; 3] = [Self::Active, Self::Paused, Self::Disabled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Disabled => "disabled",
        }
    }

    /// The state stored as `s`; `None` for text that names no state.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

impl fmt::Display for DestinationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_from_its_stored_text_and_its_json() {
        for state in DeliveryState::ALL {
            assert_eq!(DeliveryState::parse(state.as_str()), Some(state));
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        for state in DestinationState::ALL {
            assert_eq!(DestinationState::parse(state.as_str()), Some(state));
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        assert_eq!(DeliveryState::parse("Pending"), None);
        assert_eq!(DestinationState::parse(""), None);
    }
}
