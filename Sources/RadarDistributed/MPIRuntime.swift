import RadarCore
