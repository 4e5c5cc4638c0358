//! The daemon's route table: which backend serves `/mcp/<app>` right now.
//!
//! The gateway resolves every request through [`RouteTable`] (an `AppDirectory`). Switching a release
//! is one map insert: requests that already resolved keep their backend (sessions of the old release
//! keep their own child until they end), new sessions get the new one. That is the blue/green switch.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::gateway::{AppDirectory, AppRoute};

#[derive(Default)]
pub struct RouteTable {
    routes: RwLock<HashMap<String, Arc<AppRoute>>>,
}

impl RouteTable {
    /// Points `app` at `route`, returning the route it replaces.
    pub fn set(&self, app: &str, route: AppRoute) -> Option<Arc<AppRoute>> {
        self.routes.write().expect("route table lock").insert(app.to_string(), Arc::new(route))
    }

    /// Stops serving `app` (destroy).
    pub fn remove(&self, app: &str) -> Option<Arc<AppRoute>> {
        self.routes.write().expect("route table lock").remove(app)
    }

    pub fn get(&self, app: &str) -> Option<Arc<AppRoute>> {
        self.routes.read().expect("route table lock").get(app).cloned()
    }

    pub fn apps(&self) -> Vec<String> {
        let mut apps: Vec<String> = self.routes.read().expect("route table lock").keys().cloned().collect();
        apps.sort();
        apps
    }
}

impl AppDirectory for RouteTable {
    fn resolve(&self, app: &str) -> Option<Arc<AppRoute>> {
        self.get(app)
    }
}
