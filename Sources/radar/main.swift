print("radar")
