//! Components of the home page.

pub mod device_panel;
pub mod form;
pub mod list_card;
pub mod live_status;
pub mod user_card;
