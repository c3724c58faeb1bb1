//! Components of the home page.

pub mod device_panel;
pub mod live_status;
pub mod user_card;
