-- One catalog database per region: a region's workers touch only their region's catalog.
CREATE DATABASE vecmigrate_us OWNER vecmigrate;
CREATE DATABASE vecmigrate_eu OWNER vecmigrate;
\c vecmigrate
CREATE EXTENSION IF NOT EXISTS vector;
\c vecmigrate_us
CREATE EXTENSION IF NOT EXISTS vector;
\c vecmigrate_eu
CREATE EXTENSION IF NOT EXISTS vector;
