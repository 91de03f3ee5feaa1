module github.com/sqlfs/sqlfs

go 1.26.8

require (
	github.com/hanwen/go-fuse/v2 v2.12.1
	github.com/mattn/go-sqlite3 v1.14.53
	github.com/superfly/ltx v0.5.3
	golang.org/x/sys v0.50.0
)

require github.com/pierrec/lz4/v4 v4.1.23 // indirect
