module kubetask.local/pause

go 1.25
